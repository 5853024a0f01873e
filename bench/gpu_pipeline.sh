#!/usr/bin/env bash
# Every stage's CUDA path at micro size, run unchanged on a GPU machine from the repo root: pretrain and
# midtrain with bf16 autocast, the TRL stages in bf16, torchao int4 weight-only quantization, the export
# checks (transformers and llama.cpp). A throwaway copy of the repo runs `dvc repro` on the micro profile;
# the report card is printed at the end.
#   bash bench/gpu_pipeline.sh                       (CUDA, int4)
#   DEVICE=cpu SCHEME=int8 bash bench/gpu_pipeline.sh  (the same on CPU: a smoke test of this script)
set -euo pipefail
DEVICE=${DEVICE:-cuda}
SCHEME=${SCHEME:-int4}
ws=$(mktemp -d)/ws
mkdir -p "$ws"
cp -r dvc.yaml params.yaml stages gptpipe profiles .dvc .dvcignore .gitignore "$ws"/
cd "$ws"
git init -q && git add -A && git -c user.name=bench -c user.email=bench@gptpipe commit -qm bench
python -m gptpipe.cli profile use micro >/dev/null
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
time python -m gptpipe.cli run --set device.type="$DEVICE" --set quantize.scheme="$SCHEME"
cat reports/report.md
echo "workspace: $ws"
