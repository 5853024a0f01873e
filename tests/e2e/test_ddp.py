"""DDP on 2 CPU processes (gloo): pretrain under torchrun, a TRL stage under `accelerate launch`, the loop's
guarantees, and pretrain across two nodes (two torchrun agents on 127.0.0.1)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, make_workspace, sh
from gptpipe import profile

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


def pretrain_workspace(dest: Path, micro_data, *sets: str) -> Path:
    """A micro workspace with the tokenizer and token shards in place: pretrain's inputs, ten steps of 1024 tokens."""
    ws = make_workspace(dest, sets=("pretrain.total_batch_tokens=1024", "pretrain.tokens=10240", *sets))
    for name in ("tokenizer", "tokens"):
        shutil.copytree(micro_data[1][name], ws / "data" / name)
    return ws


def test_two_nodes_train_the_same_weights_as_one_node_with_two_processes(micro_data, tmp_path):
    one = pretrain_workspace(tmp_path / "one", micro_data, "pretrain.nproc=2")
    sh([sys.executable, "-m", "stages.pretrain"], one)

    # Two machines, one process each: each node its own checkout with the same params and data.
    node0 = pretrain_workspace(tmp_path / "node0", micro_data, "pretrain.nnodes=2", "pretrain.rdzv_timeout_s=60",
                               f"pretrain.rdzv_endpoint=127.0.0.1:{free_port()}")
    node1 = shutil.copytree(node0, tmp_path / "node1")
    # Node 1 starts first and waits for node 0's endpoint: c10d orders nodes by host name then process id, so
    # node 1 most likely gets the global rank 0, and node 0 must write the outputs all the same.
    nodes = [subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=ws, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env={**os.environ, "GPTPIPE_NODE_RANK": str(rank)})
             for rank, ws in reversed(list(enumerate((node0, node1))))][::-1]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "launching 1 process on node 1 of 2: torchrun --nnodes=2" in logs[1]

    m = json.loads((node0 / "metrics/pretrain.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 10
    assert not (node1 / "models/base").exists() and not (node1 / "metrics/pretrain.json").exists()
    a, b = load_file(one / "models/base/model.safetensors"), load_file(node0 / "models/base/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unreachable_rendezvous_fails_in_one_line_before_any_work(micro_data, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    ws = pretrain_workspace(tmp_path / "ws", micro_data, "pretrain.nnodes=2", "pretrain.rdzv_timeout_s=2",
                            f"pretrain.rdzv_endpoint={endpoint}")
    r = sh([sys.executable, "-m", "stages.pretrain"], ws, check=False, env={**os.environ, "GPTPIPE_NODE_RANK": "1"})
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.startswith(f"error [pretrain]: pretrain.rdzv_endpoint {endpoint}: no rendezvous answered in 2 s")
    assert "start the stage on node 0 first" in r.stderr and r.stderr.count("\n") == 1

    profile.set_values(["pretrain.rdzv_endpoint=192.0.2.1:29500"], ws / "params.yaml")  # not this machine's
    r = sh([sys.executable, "-m", "stages.pretrain"], ws, check=False)  # node 0, as GPTPIPE_NODE_RANK is unset
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error [pretrain]: pretrain.rdzv_endpoint 192.0.2.1:29500: node 0 cannot listen there")


def test_two_machines_with_the_same_node_rank_are_refused(micro_data, tmp_path):
    """Their ranks would clash and the join hang: every node stops, naming GPTPIPE_NODE_RANK, before training."""
    ws = pretrain_workspace(tmp_path / "ws", micro_data, "pretrain.nnodes=3", "pretrain.total_batch_tokens=1536",
                            "pretrain.rdzv_timeout_s=60", f"pretrain.rdzv_endpoint=127.0.0.1:{free_port()}")
    nodes = [subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=ws, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env={**os.environ, "GPTPIPE_NODE_RANK": rank})
             for rank in ("0", "1", "1")]  # nothing is written before the check, so they can share a checkout
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    for n, log in zip(nodes, logs):
        assert n.returncode != 0 and "error [pretrain]: GPTPIPE_NODE_RANK: the 3 nodes are numbered 0, 1, 1" in log, log
        assert "micro-batches of" not in log  # the loop never started
    assert not (ws / "models/base").exists()
