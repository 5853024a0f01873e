"""Our training loop, shared by pretrain and midtrain.

AdamW (fused on CUDA), or Muon for the blocks' matrices beside it, warmup + cosine or warmup-stable-decay
schedule, gradient accumulation to a token batch size, grad clipping, bf16 autocast (CUDA, and CPUs with AMX
or AVX-512 BF16), optional torch.compile, DDP under torchrun, periodic validation, resumable checkpoints and a
guard that stops on a non-finite loss.

Batches come from `batch_fn(step, micro)`, a pure function of its arguments, so a resumed run sees
exactly the batches the crashed one would have seen.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptpipe import ckpt
from gptpipe.config import Train, Wandb
from gptpipe.dist import Proc, agree, all_mean, barrier, bf16
from gptpipe.errors import UserError
from gptpipe.io import RunLog, write_plot
from gptpipe.model import fp32_attention


class NonFiniteLoss(UserError):
    pass


def lr_at(step: int, steps: int, t: Train) -> float:
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    lo = t.lr * t.min_lr_frac
    if t.schedule == "cosine":
        progress = (step - t.warmup_steps) / max(1, steps - t.warmup_steps)
        return lo + (t.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = int(steps * (1 - t.decay_frac))  # wsd: flat, then linear decay to the end
    if step < decay_start:
        return t.lr
    return t.lr + (lo - t.lr) * (step - decay_start + 1) / max(1, steps - decay_start)


class Optimizers:
    """Several optimizers stepped, zeroed, saved and scheduled as one."""

    def __init__(self, *opts: torch.optim.Optimizer):
        self.opts = opts

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.opts for g in o.param_groups]

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {str(i): o.state_dict() for i, o in enumerate(self.opts)}

    def load_state_dict(self, state: dict) -> None:
        for i, o in enumerate(self.opts):
            o.load_state_dict(state[str(i)])


def param_groups(model, t: Train) -> tuple[list, list[dict]]:
    """(Muon's parameters, AdamW's groups). With t.optimizer muon, Muon takes the matrices inside the blocks;
    AdamW keeps the embeddings and the head (a lookup and a classifier, not maps between hidden states)
    and the vectors. Matrices decay, vectors (norm gains) don't."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if t.optimizer == "muon" and p.dim() == 2 and ".layers." in n]
    taken = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in taken]
    return hidden, [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": t.weight_decay, "base_lr": t.lr},
                    {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "base_lr": t.lr}]


def make_optimizer(model, t: Train, device: torch.device) -> Optimizers:
    """AdamW for everything, or Muon for the blocks' matrices and AdamW for the rest (t.optimizer). Each
    group keeps its `base_lr`; the schedule scales them all alike."""
    hidden, groups = param_groups(model, t)
    opts = [torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=device.type == "cuda")]
    if hidden:
        opts.append(torch.optim.Muon([{"params": hidden, "base_lr": t.muon_lr}], lr=t.muon_lr, weight_decay=0.0,
                                     momentum=t.muon_momentum))
    return Optimizers(*opts)


def autocast(t: Train, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16(t.dtype, device.type) else nullcontext()


def lm_loss(model, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction=reduction)


class LossModule(torch.nn.Module):
    """Model + loss as one module, so torch.compile fuses the fp32 upcast and log-softmax of the
    logits into the graph instead of materialising them, and DDP wraps the whole step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return lm_loss(self.model, x, y)


@torch.no_grad()
def val_loss(model, windows: list[torch.Tensor], t: Train, proc: Proc, batch: int) -> float:
    """Mean next-token loss over fixed validation windows (each rank scores its share)."""
    model.eval()
    total, count = 0.0, 0
    mine = windows[proc.rank::proc.world]
    for i in range(0, len(mine), batch):
        rows = torch.stack(mine[i:i + batch]).to(proc.device)
        with autocast(t, proc.device):
            total += lm_loss(model, rows[:, :-1], rows[:, 1:], "sum").item()
        count += rows[:, 1:].numel()
    model.train()
    return all_mean(total / max(count, 1), proc)


@dataclass(frozen=True)
class Run:
    """One run of the loop besides the model and its Train section: data, length, checkpoints, logging."""
    stage: str                                   # names the plot, the log, the wandb run and every message
    batch_fn: Callable[[int, int], tuple]        # (step, micro) -> (x, y); pure, so a resume sees the same batches
    val_windows: list[torch.Tensor]
    total_tokens: int
    ckpt_root: Path
    key: str                                     # ckpt.key of what the run is made from
    flops_per_token: float = 0.0                 # with peak_flops: the MFU figure
    peak_flops: float = 1.0
    wandb: Wandb = field(default_factory=lambda: Wandb(mode="disabled", project="gptpipe"))
    config: dict = field(default_factory=dict)   # what wandb records of the params


class Progress:
    """What rank 0 reports as the run goes: a tqdm bar, logs/<stage>.jsonl, a wandb run when enabled, and at
    the end plots/<stage>.csv. Other ranks report nothing."""

    def __init__(self, run: Run, main: bool, steps: int, start: int, history: list[dict]):
        self.main, self.history = main, history
        self.bar = tqdm(total=steps, initial=start, desc=run.stage, unit="step", disable=not main,
                        dynamic_ncols=True, mininterval=1.0)
        self.log = RunLog(run.stage, fresh=not start) if main else None
        self.wandb = start_wandb(run.wandb, run.stage, run.config) if main else None
        self.stage = run.stage

    def event(self, **row) -> None:
        if self.main:
            self.log(**row)

    def step(self, row: dict, logged: bool, mfu: float) -> None:
        self.bar.update(1)
        if not self.main:
            return
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        self.history.append(row)
        if logged:
            self.log(event="step", **row, mfu=round(mfu, 6))
            if self.wandb:
                self.wandb.log({k: v for k, v in row.items() if k != "step"} | {"mfu": mfu}, step=row["step"])

    def end(self, metrics: dict) -> None:
        self.bar.close()
        if not self.main:
            return
        write_plot(self.stage, self.history)
        self.log(event="end", **metrics)
        self.log.close()
        if self.wandb:
            self.wandb.summary.update(metrics)
            self.wandb.finish()


def train(model, t: Train, proc: Proc, run: Run) -> dict:
    """Train in place; return the stage metrics. Writes plots/<stage>.csv and logs/<stage>.jsonl."""
    stage = run.stage
    if not run.val_windows:
        raise UserError(f"{stage}: the val split has fewer than seq_len+1 = {t.seq_len + 1} tokens: "
                        f"raise data.val_fraction or lower {stage}.seq_len")
    per_step = t.batch_size * t.seq_len * proc.world
    if t.total_batch_tokens % per_step:
        raise UserError(f"{stage}.total_batch_tokens ({t.total_batch_tokens}) must be a multiple of "
                        f"batch_size * seq_len * processes ({per_step})")
    accum = t.total_batch_tokens // per_step
    steps = max(1, run.total_tokens // t.total_batch_tokens)

    # Compiled CPU kernels otherwise sum in whatever order the threads finish (scatter-adds in the backward):
    # two pretrains from the same params differed in the 5th digit of the loss and in every weight file.
    if t.deterministic and proc.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition, before its first matmul
    torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
    model.to(proc.device).train()
    attention = fp32_attention(model, t.dtype, proc.device.type)  # bf16 on a CPU: a step at 1.45x fp32's speed
    opt = make_optimizer(model, t, proc.device)
    start, history, state = 0, [], {}
    found = ckpt.latest(run.ckpt_root, run.key)
    if found:
        state = ckpt.load(found, model, opt, proc.device)
        start, history = state["step"], state["history"]
    if not agree(start, proc):  # each node resumes from its own disk: a node that lost its checkpoints
        raise UserError(f"{stage}: the nodes found different checkpoints to resume from (this one: step {start}); "
                        f"delete {run.ckpt_root} on every node and rerun")

    fwd = LossModule(model)
    if t.compile:
        fwd = torch.compile(fwd)
    if proc.world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None)

    progress = Progress(run, proc.main, steps, start, history)
    if proc.main:
        what = f"resuming from {found} (step {start}/{steps})" if found else f"{steps} steps"
        print(f"{stage}: {what}, {accum} micro-batches of {t.batch_size}x{t.seq_len} tokens per step "
              f"x {proc.world} process(es), {t.total_batch_tokens:,} tok/step, {run.total_tokens:,} tokens",
              flush=True)
    progress.event(event="start", steps=steps, resumed_from=start, accum=accum, world=proc.world)
    mfu = lambda tokens_per_s: run.flops_per_token * tokens_per_s / (run.peak_flops * proc.world)

    timed_tokens, timed_secs = 0, 0.0
    for step in range(start, steps):
        lr = lr_at(step, steps, t)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr / t.lr
        t0 = time.perf_counter()
        loss_sum = 0.0
        for micro in range(accum):
            x, y = run.batch_fn(step, micro)
            x, y = x.to(proc.device, non_blocking=True), y.to(proc.device, non_blocking=True)
            sync = proc.world == 1 or micro == accum - 1
            with (nullcontext() if sync else fwd.no_sync()), autocast(t, proc.device):
                loss = fwd(x, y) / accum
            loss.backward()
            loss_sum += loss.detach()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        loss_val = all_mean(float(loss_sum), proc)  # one device sync per step
        if not math.isfinite(loss_val):
            last = ckpt.latest(run.ckpt_root, run.key)
            raise NonFiniteLoss(f"{stage}: loss became {loss_val} at step {step}; nothing was written "
                                f"(last good checkpoint: {last or 'none'}). Lower {stage}.lr or raise "
                                f"{stage}.warmup_steps, then rerun to resume")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if proc.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step > start + 1 or steps - start <= 2:  # skip warm-up/compile steps in the speed figure
            timed_tokens, timed_secs = timed_tokens + t.total_batch_tokens, timed_secs + dt

        row = {"step": step + 1, "tokens": (step + 1) * t.total_batch_tokens, "loss": round(loss_val, 5),
               "lr": lr, "tokens_per_s": round(t.total_batch_tokens / dt, 1)}
        last_step = step + 1 == steps
        if (step + 1) % t.eval_every == 0 or last_step:
            row["val_loss"] = round(val_loss(model, run.val_windows, t, proc, t.batch_size), 5)
        logged = (step + 1) % t.log_every == 0 or "val_loss" in row or last_step
        progress.step(row, logged, mfu(row["tokens_per_s"]))
        if (step + 1) % t.ckpt_every == 0 and not last_step:
            if proc.local_rank == 0:  # one copy per node, so every node can resume from its own disk
                ckpt.save(run.ckpt_root, step + 1, model, opt, {"key": run.key, "history": history})
            barrier(proc)

    tps = timed_tokens / timed_secs if timed_secs else 0.0
    final = history[-1] if history else {}
    metrics = {"steps": steps, "tokens": steps * t.total_batch_tokens, "resumed_from_step": start,
               "final_loss": final.get("loss"), "val_loss": final.get("val_loss"),
               "tokens_per_s": round(tps, 1), "processes": proc.world, "mfu": round(mfu(tps), 6),
               "flops_per_token": run.flops_per_token}
    progress.end(metrics)
    model.set_attn_implementation(attention)
    return metrics


def start_wandb(w: Wandb, stage: str, config: dict):
    mode = os.environ.get("WANDB_MODE", w.mode)
    if mode == "disabled":
        return None
    import wandb

    os.makedirs("logs", exist_ok=True)
    return wandb.init(project=w.project, name=stage, job_type=stage, dir="logs", mode=mode,
                      config=config, reinit="finish_previous")
