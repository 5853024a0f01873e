"""The body of every TRL stage: params, inputs checked, `accelerate launch` when asked, an atomic output, metrics."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from gptpipe import dist
from gptpipe.config import load_params
from gptpipe.errors import require_file
from gptpipe.io import atomic_dir, write_metrics


def run(stage: str, train, **inputs: tuple[str, str]) -> None:
    """models/<stage> = train(params.<stage>, params.wandb, out=..., **{name: path}).

    `inputs` maps a train() argument to (path, the stage that makes it); all are checked before any work.
    """
    p = load_params()
    section = getattr(p, stage)
    cuda = dist.wants_cuda(p.device)
    if not cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first looks for a GPU: TRL follows torch
    paths = {name: require_file(path, made_by=by) for name, (path, by) in inputs.items()}
    # transformers' wandb callback writes ./wandb unless told: put its runs in logs/wandb, beside pretrain's
    os.makedirs("logs", exist_ok=True)
    os.environ.setdefault("WANDB_DIR", os.path.abspath("logs"))
    os.environ.setdefault("WANDB_PROJECT", p.wandb.project)
    dist.relaunch(section.nproc, accelerate=True, bf16=cuda)  # the trainer joins the process group it sets up
    t0 = time.perf_counter()
    if int(os.environ.get("RANK", 0)):  # only rank 0 writes the model and the metrics
        with tempfile.TemporaryDirectory() as out:
            train(section, p.wandb, out=Path(out), **paths)
        return
    with atomic_dir(f"models/{stage}") as out:
        metrics = train(section, p.wandb, out=out, **paths)
    write_metrics(stage, {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2),
                          "device": "cuda" if cuda else "cpu"})
    shutil.rmtree(f"checkpoints/{stage}", ignore_errors=True)  # they only serve a rerun of a killed run
