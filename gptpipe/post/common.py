"""What every TRL stage shares: the policy, its data, device-aware trainer args, the fit, its plot."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from gptpipe.config import Post, Wandb
from gptpipe.io import read_jsonl, write_plot

PAIRS = ("prompt", "chosen", "rejected")  # the columns of the tasks stage's preference pairs


def load_policy(path: Path):
    """The tokenizer and a causal LM in fp32 (on CUDA the trainer's bf16 autocast takes over)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def dataset(path: Path, keys: tuple[str, ...]):
    """A `datasets.Dataset` of the tasks stage's JSON lines, with just the columns the trainer reads."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in keys} for r in read_jsonl(path, keys)])


def trainer_args(s: Post, wb: Wandb, stage: str) -> dict:
    """Keyword arguments for a TRL *Config on this device.

    On CPU: fp32 and no gradient checkpointing. TRL 1.16 defaults to bf16 and gradient checkpointing,
    which made a tiny model's step ~5x slower on a CPU without bf16 units (measured 1.84 s vs 0.38 s).
    Nothing is saved on the way (the stage saves the final model atomically); checkpoints/<stage> is scratch.
    """
    cuda = torch.cuda.is_available()
    mode = os.environ.get("WANDB_MODE", wb.mode)
    return dict(output_dir=f"checkpoints/{stage}", run_name=stage, learning_rate=s.lr, num_train_epochs=s.epochs,
                per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
                warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay, lr_scheduler_type="cosine",
                logging_steps=5, save_strategy="no", seed=s.seed, data_seed=s.seed, bf16=cuda, use_cpu=not cuda,
                gradient_checkpointing=False, dataloader_num_workers=0,
                report_to=[] if mode == "disabled" else ["wandb"], disable_tqdm=False)


def fit(trainer, stage: str) -> dict:
    """Train; write plots/<stage>.csv; return the run's metrics (the stage adds its own)."""
    t0 = time.perf_counter()
    result = trainer.train()
    secs = time.perf_counter() - t0
    if trainer.is_world_process_zero():
        write_plot(stage, plot_rows(trainer.state.log_history))
    return {"train_loss": round(result.training_loss, 5), "steps": result.global_step,
            "examples": len(trainer.train_dataset), "train_s": round(secs, 2)}


def save(trainer, out: Path) -> None:
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out)
        trainer.processing_class.save_pretrained(out)


def logged(trainer, key: str, which: int = -1):
    """A value the trainer logged: the last (which=-1) or first (0) time it did; None if never."""
    values = [h[key] for h in trainer.state.log_history if key in h]
    return round(values[which], 5) if values else None


PLOTTED = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "rewards/accuracies", "rewards/margins",
           "accuracy", "reward", "kl", "clip_ratio/region_mean")


def plot_rows(log_history: list[dict]) -> list[dict]:
    """The trainer's logged training steps as plots/<stage>.csv rows."""
    return [{"step": h["step"], **{k.replace("/", "_"): h[k] for k in PLOTTED if k in h}}
            for h in log_history if "loss" in h and "step" in h]
