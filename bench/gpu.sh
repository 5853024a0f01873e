#!/usr/bin/env bash
# GPU checks, run unchanged on a CUDA machine from the repo root: the bf16 autocast, torch.compile, Muon (the
# default optimizer for the blocks' matrices) and fused-AdamW paths of our loop, with tokens/s, MFU and peak
# memory vs the minimal reference loop (AdamW).
#   bash bench/gpu.sh            (PEAK is the H100 dense bf16 figure; set it for other GPUs)
# On the lent device machine: run bench/gpu_wheels.sh here first and carry .gpu_wheels.
set -euo pipefail
PY=${PY:-python3}
PEAK=${PEAK:-9.89e14}
if [ -d .gpu_wheels ]; then  # made by bench/gpu_wheels.sh: our pins the machine's image lacks
    $PY -m pip install -q --no-index --no-deps .gpu_wheels/*.whl
fi
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
common=(--set device.type=cuda --set device.peak_flops=$PEAK --set pretrain.dtype=auto --set pretrain.deterministic=false)
d12=(--set model.depth=12 --set model.aspect_ratio=64 --set model.head_dim=64 --set model.kv_group=1
     --set model.max_seq_len=2048 --set tokenizer.vocab_size=32768 --set pretrain.seq_len=2048)
echo "== d12 (width 768, seq 2048, vocab 32768, 512K tok/step), bf16 + torch.compile, micro-batch 16"
$PY bench/pretrain.py --steps 12 "${common[@]}" "${d12[@]}" --set pretrain.compile=true \
    --set pretrain.batch_size=16 --set pretrain.total_batch_tokens=524288
echo "== same, micro-batch 32"
$PY bench/pretrain.py --steps 12 "${common[@]}" "${d12[@]}" --set pretrain.compile=true \
    --set pretrain.batch_size=32 --set pretrain.total_batch_tokens=524288
echo "== same, AdamW for every parameter (the runs above use Muon for the blocks' matrices)"
$PY bench/pretrain.py --steps 12 "${common[@]}" "${d12[@]}" --set pretrain.compile=true \
    --set pretrain.batch_size=16 --set pretrain.total_batch_tokens=524288 --set pretrain.optimizer=adamw
echo "== d12, bf16 eager (no compile), micro-batch 16"
$PY bench/pretrain.py --steps 6 "${common[@]}" "${d12[@]}" --set pretrain.batch_size=16 \
    --set pretrain.total_batch_tokens=524288
echo "== d12 with nanochat's head size 128 (6 heads instead of 12): FLOPs per token alike, larger attention tiles"
$PY bench/pretrain.py --steps 12 "${common[@]}" "${d12[@]}" --set model.head_dim=128 --set pretrain.compile=true \
    --set pretrain.batch_size=16 --set pretrain.total_batch_tokens=524288
