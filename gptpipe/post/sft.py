"""Supervised fine-tuning with TRL's SFTTrainer; the loss covers the assistant's tokens only.

The chat template marks assistant turns with {% generation %}, which is what TRL's
`assistant_only_loss` reads, so the same template serves every stage.
"""

from __future__ import annotations

from pathlib import Path

from gptpipe.config import SFT, Wandb
from gptpipe.post.common import dataset, fit, load_policy, logged, save, trainer_args


def make_trainer(s: SFT, wb: Wandb, *, policy: Path, conversations: Path, stage: str = "sft", peft_config=None):
    from trl import SFTConfig, SFTTrainer

    tok, model = load_policy(policy)
    cfg = SFTConfig(**trainer_args(s, wb, stage, policy, conversations), assistant_only_loss=True,
                    max_length=s.max_length, packing=False)
    return SFTTrainer(model=model, args=cfg, train_dataset=dataset(conversations, ("messages",)),
                      processing_class=tok, peft_config=peft_config)


def train(s: SFT, wb: Wandb, *, policy: Path, conversations: Path, out: Path) -> dict:
    trainer = make_trainer(s, wb, policy=policy, conversations=conversations)
    metrics = fit(trainer, "sft")
    save(trainer, out)
    tokens = logged(trainer, "num_tokens") or 0
    return {**metrics, "mean_token_accuracy": logged(trainer, "mean_token_accuracy"),
            "tokens_per_s": round(tokens / metrics["train_s"], 1)}
