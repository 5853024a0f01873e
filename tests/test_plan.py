"""The scaling planner's formulas."""

import os
from pathlib import Path

import pytest

from gptpipe.plan import GPUS, plan

REPO = Path(__file__).resolve().parents[1]


def test_formulas_tie_together():
    p = plan(12, 1, "h100", mfu=0.5, vocab=32768, seq_len=1024, head_dim=64)
    assert p.tokens == int(20 * p.params)
    assert p.flops == pytest.approx(p.flops_per_token * p.tokens)
    assert p.hours == pytest.approx(p.flops / (GPUS["h100"][0] * 0.5) / 3600)
    assert p.cost == pytest.approx(p.hours * GPUS["h100"][1])
    # 6N dominates: within the attention term of 6 x non-embedding params per token
    assert 6 * p.params_non_embedding < p.flops_per_token < 6 * p.params_non_embedding + 12 * 12 * 768 * 1024 + 1


def test_nanochat_d20_scale_and_linear_in_gpus():
    one, eight = plan(20, 1), plan(20, 8)
    assert 540e6 < one.params < 580e6            # nanochat's d20 is ~561M
    assert eight.hours == pytest.approx(one.hours / 8) and eight.cost == pytest.approx(one.cost)
    assert 2 < eight.hours < 8                   # the "$100, ~4 h on 8xH100" class of run at 40% MFU
    assert plan(20, 8, price=2.0).cost == pytest.approx(eight.hours * 8 * 2.0)


def test_cli_prints_a_plan_and_refuses_bad_flags():
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "gptpipe.cli", "plan", *a], capture_output=True, text=True)
    r = run("--depth", "20", "--gpus", "8")
    assert r.returncode == 0 and "M params" in r.stdout and "8x h100" in r.stdout and "$" in r.stdout
    r = run("--mfu", "40")
    assert r.returncode == 2 and "--mfu" in r.stderr and "Traceback" not in r.stderr


def test_nodes_times_gpus_per_node():
    import subprocess
    import sys

    from gptpipe.config import load_params
    from gptpipe.plan import describe_params, from_params

    r = subprocess.run([sys.executable, "-m", "gptpipe.cli", "plan", "--depth", "20", "--nodes", "2", "--gpus", "8"],
                       capture_output=True, text=True)
    sixteen = plan(20, 16)
    assert r.returncode == 0 and "on 2 nodes x 8x h100 (16 GPUs) at 40% MFU" in r.stdout
    assert f"{sixteen.hours:,.2f} h, ~${sixteen.cost:,.0f}" in r.stdout
    assert sixteen.hours == pytest.approx(plan(20, 8).hours / 2) and sixteen.cost == pytest.approx(plan(20, 8).cost)
    one = load_params(REPO / "params.yaml", ["pretrain.nproc=2", "pretrain.total_batch_tokens=16384"])
    two = load_params(REPO / "params.yaml", ["pretrain.nproc=2", "pretrain.total_batch_tokens=16384",
                                             "pretrain.nnodes=2", "pretrain.rdzv_endpoint=10.0.0.1:29500"])
    assert from_params(two).hours == pytest.approx(from_params(one).hours / 2)
    assert "on 2 nodes x 2x cpu (4 processes)" in describe_params(two)


def test_plan_from_params_uses_the_pretrain_budget_and_processes():
    from gptpipe import dist
    from gptpipe.config import load_params
    from gptpipe.plan import from_params

    p = load_params(REPO / "params.yaml", ["pretrain.tokens=1000000"])
    x = from_params(p, mfu=0.5)
    assert x.tokens == 1_000_000
    assert x.hours == pytest.approx(x.flops / (dist.peak_flops(p.device) * p.pretrain.nproc * 0.5) / 3600)
    p = load_params(REPO / "params.yaml", ["pretrain.tokens=null"])
    assert from_params(p).tokens == int(p.pretrain.token_ratio * from_params(p).params)


def test_switching_to_a_gpu_profile_prints_what_it_costs(tmp_path):
    import shutil
    import subprocess
    import sys

    shutil.copy(REPO / "params.yaml", tmp_path)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    r = subprocess.run([sys.executable, "-m", "gptpipe.cli", "profile", "use", "speedrun-8xh100"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "562M params" in r.stdout and "on 8x h100 at 40% MFU" in r.stdout and "~$" in r.stdout


def test_peak_flops_is_set_or_this_cpus():
    import torch

    from gptpipe import dist
    from gptpipe.config import Device

    assert dist.peak_flops(Device(type="cpu", threads=None, peak_flops=9.89e14)) == 9.89e14
    cpu = Device(type="cpu", threads=None, peak_flops=None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dist.peak_flops(cpu)
        torch.set_num_threads(2)
        assert dist.peak_flops(cpu) == pytest.approx(2 * one)  # per thread torch computes on
    finally:
        torch.set_num_threads(threads)
    assert 4e9 < one < 4e11  # 8 to 64 fp32 FLOP per cycle at 0.5 to 6 GHz
