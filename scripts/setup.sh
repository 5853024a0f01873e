# Sourced by the README commands: creates .venv and installs gptpipe into it, once.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.gptpipe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing gptpipe and its pinned dependencies into .venv (first time: ~7 min, llama.cpp compiles)"
    # This machine's pip config names local index folders that may not exist: drop those warnings.
    quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }
    quiet .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    # llama-cpp-python compiles llama.cpp: skip its multimodal library (a third of the build), and
    # build for a portable CPU, since pip caches the wheel without regard to these flags.
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF ${CMAKE_ARGS:-}" \
        quiet .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# Offline by default: no analytics, no hub, wandb writes local files only.
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export WANDB_MODE="${WANDB_MODE:-offline}" PREFECT_SERVER_ANALYTICS_ENABLED=false
