"""Training checkpoints: safetensors weights, optimizer state loaded with weights_only, JSON state.

Each checkpoint is a `step_NNNNNNN/` folder written under a temporary name and renamed into place,
with state.json written last: a folder without it is incomplete and ignored. Only the newest is kept.
A checkpoint remembers the hash of the params it was made with; other params start fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptpipe.errors import UserError, cause
from gptpipe.io import digest

STATE = "state.json"


def key(params: dict, *inputs: Path) -> str:
    """What a checkpoint was made from: a short hash of the params and of the inputs' bytes. Our loop and the
    TRL stages key theirs with it, so one made with other params, another model or other data is never resumed."""
    return hashlib.sha256((json.dumps(params, sort_keys=True) + digest(*inputs)).encode()).hexdigest()[:12]


def save(root: Path, step: int, model, optimizer, state: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optim.pt")
        (tmp / STATE).write_text(json.dumps({"step": step, **state}))
        with open(tmp / STATE) as f:  # make the contents durable before the rename publishes them
            os.fsync(f.fileno())
    except BaseException:  # e.g. disk full: the previous checkpoint stays, and no half-written one takes space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in root.glob("step_*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path, key: str) -> Path | None:
    """The newest complete checkpoint made with the same params key, else None."""
    for path in sorted(root.glob("step_*"), reverse=True):
        try:
            state = json.loads((path / STATE).read_text())
        except (OSError, ValueError):
            continue
        if state.get("key") == key:
            return path
    return None


def load(path: Path, model, optimizer, device) -> dict:
    """Restore model and optimizer in place. A checkpoint that is corrupt, of another model, or carries
    anything but tensors and numbers (a pickle that would run code) stops the stage with a UserError."""
    try:
        model.load_state_dict(load_file(path / "model.safetensors", device=str(device)))
        # weights_only: the optimizer state is tensors and numbers; nothing else may be unpickled.
        optimizer.load_state_dict(torch.load(path / "optim.pt", map_location=device, weights_only=True))
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
        raise UserError(f"{path}: unusable checkpoint ({cause(e)}); delete {path} "
                        "to train this stage from the start") from None
    return json.loads((path / STATE).read_text())
