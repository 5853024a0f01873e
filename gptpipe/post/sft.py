"""Supervised fine-tuning with TRL's SFTTrainer; the loss covers the assistant's tokens only.

The chat template marks assistant turns with {% generation %}, which is what TRL's
`assistant_only_loss` reads, so the same template serves every stage.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from gptpipe.config import SFT, Wandb
from gptpipe.errors import UserError
from gptpipe.io import write_plot
from gptpipe.post.common import plot_rows, trainer_args


def read_conversations(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or "messages" not in rows[0]:
        raise UserError(f"{path}: expected JSON lines with a 'messages' list; rerun `dvc repro tasks`")
    return [{"messages": r["messages"]} for r in rows]


def make_trainer(s: SFT, wb: Wandb, *, policy: Path, conversations: Path, scratch: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    data = Dataset.from_list(read_conversations(conversations))
    cfg = SFTConfig(**trainer_args(out=scratch, lr=s.lr, epochs=s.epochs, batch_size=s.batch_size,
                                   grad_accum=s.grad_accum, warmup_ratio=s.warmup_ratio,
                                   weight_decay=s.weight_decay, seed=s.seed, wandb_mode=wb.mode),
                    assistant_only_loss=True, max_length=s.max_length, packing=False, run_name="sft")
    return SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)


def train(s: SFT, wb: Wandb, *, policy: Path, conversations: Path, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        trainer = make_trainer(s, wb, policy=policy, conversations=conversations, scratch=scratch)
        t0 = time.perf_counter()
        result = trainer.train()
        secs = time.perf_counter() - t0
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out)
        trainer.processing_class.save_pretrained(out)
        write_plot("sft", plot_rows(trainer.state.log_history))
    last = next((h for h in reversed(trainer.state.log_history) if "mean_token_accuracy" in h), {})
    return {"train_loss": round(result.training_loss, 5), "steps": result.global_step,
            "mean_token_accuracy": last.get("mean_token_accuracy"), "conversations": len(trainer.train_dataset),
            "train_s": round(secs, 2), "tokens_per_s": round(last.get("num_tokens", 0) / secs, 1)}
