"""SIGKILL the pretrain stage mid-run; the rerun resumes from its last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_workspace, sh

pytestmark = pytest.mark.e2e


def test_sigkill_then_resume(tmp_path):
    ws = make_workspace(tmp_path / "ws", sets=("pretrain.tokens=102400", "pretrain.ckpt_every=10"))
    sh(["dvc", "repro", "tokenize"], ws)
    ckpts = ws / "checkpoints" / "pretrain"
    proc = subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=ws,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not any(ckpts.glob("step_*/state.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(ckpts.glob("step_*/state.json")), "no checkpoint before the kill"
    assert not (ws / "models" / "base").exists(), "a killed stage must not leave an output"

    r = sh(["dvc", "repro", "pretrain"], ws)
    assert "resuming from" in r.stdout
    m = json.loads((ws / "metrics/pretrain.json").read_text())
    assert m["resumed_from_step"] >= 10 and m["steps"] == 200
    assert (ws / "models/base/model.safetensors").exists()
    assert not list((ws / "models").glob(".*")), "temporary output dirs left behind"
