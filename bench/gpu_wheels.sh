#!/usr/bin/env bash
# Run here, where PyPI is reachable, before a GPU run: the device machine's image has torch but not all of
# gptpipe's pins (no pydantic; an older transformers) and cannot fetch. This puts the missing wheels, at
# the versions our venv pins, for its Python 3.12 in .gpu_wheels/ (~16 MB, git-ignored). Carry
# .gpu_wheels to the device; bench/gpu.sh installs them there before it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
pins=$($PY -m pip freeze | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|transformers|tokenizers)==')
rm -rf .gpu_wheels
$PY -m pip download -q -d .gpu_wheels --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 $pins
ls .gpu_wheels && du -sh .gpu_wheels
