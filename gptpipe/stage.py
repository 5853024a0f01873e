"""The one way a stage runs: `python -m stages.X` is `run("X", module.run, **paths)`.

The runner loads params; checks each input path exists (else names the stage that makes it) before any
work; relaunches under torchrun (our loop) or `accelerate launch` (the TRL stages) when the stage's `nproc`
asks for processes (or `nnodes` for machines: torchrun's c10d rendezvous, gptpipe/dist.py); hands each
output path a temporary sibling that replaces it only if the work succeeds (rank 0, the first process of
node 0, only: other ranks write to a throwaway folder); writes metrics/<stage>.json with `elapsed_s` and
`device` (a training stage's with its precision: "cpu:2threads, bf16"); then deletes checkpoints/<stage> (on
every node), which only serve a rerun of a killed run.

Which paths are outputs is dvc.yaml's to say (gptpipe/artifacts.py): a path argument that is one of the
stage's outs is written, any other is read. `${section.key}` in a path is filled from params, as in dvc.yaml.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from gptpipe import artifacts, dist
from gptpipe.config import load_params
from gptpipe.io import atomic_dir, replacing, write_metrics


def uptime() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): a stage's start-up, imports included."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run(stage: str, work: Callable[..., dict], *, launcher: Literal["torchrun", "accelerate"] | None = None,
        **paths: str) -> None:
    """metrics/<stage>.json = work(params, proc, **{name: path}), outputs written atomically."""
    p = load_params()
    g = artifacts.graph()[stage]
    outs = set(g["outs"] + g["metrics"])
    paths = {name: artifacts.resolve(path) for name, path in paths.items()}
    inputs = {name: artifacts.require(path) for name, path in paths.items() if path not in outs}
    if launcher == "accelerate":
        cuda = dist.wants_cuda(p.device)
        if not cuda:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first looks for a GPU: TRL follows torch
        # transformers' wandb callback reads wandb's settings from the environment only: without these it writes
        # ./wandb, and outside scripts/setup.sh's environment it went online and stopped asking for an API key
        os.makedirs("logs", exist_ok=True)
        os.environ.setdefault("WANDB_DIR", os.path.abspath("logs"))
        os.environ.setdefault("WANDB_PROJECT", p.wandb.project)
        os.environ.setdefault("WANDB_MODE", p.wandb.mode)
    if launcher:
        accelerate = launcher == "accelerate"
        dist.relaunch(stage, getattr(p, stage), accelerate=accelerate, bf16=accelerate and dist.bf16())
    proc = dist.setup(p.device, join=launcher != "accelerate")  # a trainer joins the process group it sets up
    startup, t0 = uptime(), time.perf_counter()
    with ExitStack() as stack:
        if proc.main:
            written = {name: stack.enter_context((replacing if Path(path).suffix else atomic_dir)(path))
                       for name, path in paths.items() if path in outs}
        else:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            written = {name: scratch / Path(path).name for name, path in paths.items() if path in outs}
            for w in written.values():
                if not w.suffix:
                    w.mkdir()
        metrics = work(p, proc, **inputs, **written)
        t1 = time.perf_counter()
    if proc.main and f"metrics/{stage}.json" in g["metrics"]:
        t2 = time.perf_counter()  # startup_s + elapsed_s is the stage's time: imports, work, outputs renamed
        device = proc.label
        if launcher:  # a training stage: its precision too, which follows the CPU kind (dist.bf16) and moves the bytes
            device += ", bf16" if dist.bf16(getattr(getattr(p, stage), "dtype", "auto"), proc.device.type) else ", fp32"
        write_metrics(stage, {**metrics, "elapsed_s": round(t2 - t0, 2), "write_s": round(t2 - t1, 3),
                              "startup_s": startup and round(startup, 2), "device": device})
    if proc.local_rank == 0:  # each node keeps its own checkpoints (gptpipe/loop.py)
        shutil.rmtree(Path("checkpoints", stage), ignore_errors=True)
    dist.teardown(proc)
