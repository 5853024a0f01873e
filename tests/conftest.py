"""Shared fixtures: a tiny real corpus/tokenizer/shards built once, and throwaway DVC workspaces."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKSPACE_FILES = ["dvc.yaml", "params.yaml", "stages", "gptpipe", "profiles", ".dvc", ".dvcignore", ".gitignore"]

# Tests run offline and quiet: no analytics, no hub, no wandb files.
os.environ.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
# Subprocesses (dvc, python -m stages.X) must find this interpreter's environment.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def sh(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_workspace(dest: Path, profile: str = "micro", sets: tuple[str, ...] = ()) -> Path:
    """A copy of the project in `dest`, as a git + DVC repo, switched to `profile`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy2(src, dest / name)
    sh(["git", "init", "-q"], dest)
    sh([sys.executable, "-m", "gptpipe.cli", "profile", "use", profile], dest)
    if sets:
        from gptpipe import profile as prof
        prof.set_values(list(sets), dest / "params.yaml")
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory):
    """data/raw/corpus, data/tokenizer and data/tokens of the micro profile, built with the library."""
    from gptpipe import corpus, encode
    from gptpipe.config import deep_merge, read_yaml, validate

    p = validate(deep_merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "profiles/micro.yaml")))
    root = tmp_path_factory.mktemp("micro_data")
    dirs = {k: root / k for k in ("corpus", "tokenizer", "tokens")}
    for d in dirs.values():
        d.mkdir()
    corpus.build(p.data, dirs["corpus"])
    encode.run(p.tokenizer, corpus=dirs["corpus"], tokenizer_dir=dirs["tokenizer"], tokens_dir=dirs["tokens"])
    return p, dirs


@pytest.fixture(scope="session")
def tiny_model(micro_data, tmp_path_factory):
    """An HF model dir as the stages write it (safetensors, config, the micro tokenizer), randomly initialised."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from gptpipe.model import llama_config, save

    p, dirs = micro_data
    out = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    save(LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size)), AutoTokenizer.from_pretrained(dirs["tokenizer"]), out)
    return out
