"""SIGKILL a training stage at seeded points; `dvc repro` resumes it from its last checkpoint and ends with
the metrics of an uninterrupted run with the same seed.

One workspace runs the whole chain uninterrupted first (the reference); then each stage in turn loses its
output, is killed after a seeded number of checkpoints plus a seeded delay, and is rerun by DVC.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_workspace, sh

pytestmark = pytest.mark.e2e

# Long enough that a kill after the 3rd checkpoint (plus the delay) lands well before the end.
SETS = ("pretrain.tokens=102400", "pretrain.ckpt_every=20",  # 200 steps
        "midtrain.tokens=51200", "midtrain.ckpt_every=20",   # 100 steps
        "sft.epochs=5", "sft.ckpt_every=15")                 # 140 steps (300 chats + 148 text rows, 16 a step)
# stage -> (its model dir, steps between checkpoints, the files that mark a checkpoint, metrics compared)
STAGES = {
    "pretrain": ("models/base", 20, "checkpoints/pretrain/step_*/state.json", ("final_loss", "val_loss")),
    "midtrain": ("models/mid", 20, "checkpoints/midtrain/step_*/state.json", ("final_loss", "val_loss")),
    "sft": ("models/sft", 15, "checkpoints/sft/*/checkpoint-*/trainer_state.json", ("train_loss", "mean_token_accuracy")),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A micro workspace after an uninterrupted `dvc repro sft`, and the metrics each stage ended with."""
    ws = make_workspace(tmp_path_factory.mktemp("kill") / "ws", sets=SETS)
    sh(["dvc", "repro", "sft"], ws)
    return ws, {s: json.loads((ws / f"metrics/{s}.json").read_text()) for s in STAGES}


def newest_checkpoint(ws, pattern: str) -> int:
    return max((int(re.search(r"\d+$", f.parent.name)[0]) for f in ws.glob(pattern)), default=0)


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_at_seeded_points_then_resume_matches_an_uninterrupted_run(reference, stage):
    ws, ref = reference
    out, every, pattern, keys = STAGES[stage]
    rng = random.Random(f"kill-{stage}")
    at_step, delay = every * rng.randint(1, 3), rng.uniform(0, 0.3)
    shutil.rmtree(ws / "checkpoints" / stage, ignore_errors=True)  # pretrain and midtrain keep their last one
    shutil.rmtree(ws / out)  # so DVC sees the stage out of date and reruns it

    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=ws, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while newest_checkpoint(ws, pattern) < at_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert newest_checkpoint(ws, pattern) >= at_step, f"no checkpoint at step {at_step} before the kill"
    assert not (ws / out).exists(), f"{stage} finished before the kill, or a killed stage left an output"

    r = sh(["dvc", "repro", stage], ws)
    assert f"resuming from checkpoints/{stage}/" in r.stdout
    m = json.loads((ws / f"metrics/{stage}.json").read_text())
    assert m["steps"] == ref[stage]["steps"] and m["resumed_from_step"] >= at_step
    for key in keys:
        assert m[key] == pytest.approx(ref[stage][key], abs=1e-4), key
    assert not list((ws / "models").glob(".*")), "temporary output dirs left behind"
    assert stage != "sft" or not (ws / "checkpoints/sft").exists(), "a finished TRL stage keeps no checkpoints"
