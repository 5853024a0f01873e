"""DDP on 2 CPU processes (gloo): pretrain under torchrun, a TRL stage under `accelerate launch`, the loop's guarantees."""

import json
from pathlib import Path

import pytest

from conftest import make_workspace, sh

pytestmark = pytest.mark.e2e
PROBE = Path(__file__).with_name("ddp_probe.py")


def test_pretrain_under_torchrun_and_a_trl_stage_under_accelerate(tmp_path):
    ws = make_workspace(tmp_path / "ws", sets=("pretrain.nproc=2", "pretrain.total_batch_tokens=1024", "sft.nproc=2"))
    r = sh(["dvc", "repro", "sft"], ws)
    assert r.stdout.count("launching 2 processes: torchrun") == 1  # pretrain
    assert r.stdout.count("launching 2 processes: accelerate launch") == 1  # sft
    m = json.loads((ws / "metrics/pretrain.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 40 and m["val_loss"] > 0
    assert (ws / "models/base/model.safetensors").exists()
    # The HF Trainer joins the process group accelerate sets up: each rank takes half of every epoch.
    m = json.loads((ws / "metrics/sft.json").read_text())
    assert m["steps"] == -(-m["examples"] // (16 * 2)) and (ws / "models/sft/model.safetensors").exists()


def probe(micro_data, out: Path, steps: int, crash_at: int | None = None):
    args = ["torchrun", "--standalone", "--nproc_per_node=2", str(PROBE), str(micro_data[1]["tokens"]),
            str(out), str(steps), *([str(crash_at)] if crash_at is not None else [])]
    return sh(args, Path(__file__).parents[2], check=crash_at is None)


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_see_different_data_keep_identical_weights_and_resume(micro_data, tmp_path):
    straight = tmp_path / "straight"
    probe(micro_data, straight, steps=12)
    r0, r1 = ranks(straight)
    assert len(r0["seen"]) == len(r1["seen"]) == 12 and not set(r0["seen"]) & set(r1["seen"])
    assert r0["weights"] == r1["weights"], "gradients were not synchronized"
    assert (straight / "plots/probe.csv").read_text().count("\n") == 13  # header + 12 steps, rank 0 only
    assert [p.name for p in (straight / "ck").iterdir()] == ["step_0000010"]

    crashed = tmp_path / "crashed"
    assert probe(micro_data, crashed, steps=12, crash_at=7).returncode != 0
    assert [p.name for p in (crashed / "ck").iterdir()] == ["step_0000005"]
    probe(micro_data, crashed, steps=12)
    c0, c1 = ranks(crashed)
    assert c0["resumed_from_step"] == 5 and c0["weights"] == c1["weights"] == r0["weights"]
