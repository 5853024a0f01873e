"""Direct preference optimisation with TRL's DPOTrainer, from SFT, with SFT as the frozen reference."""

from __future__ import annotations

from pathlib import Path

from gptpipe.config import DPO, Wandb
from gptpipe.post.common import PAIRS, dataset, fit, load_policy, logged, save, trainer_args


def train(s: DPO, wb: Wandb, *, policy: Path, pairs: Path, out: Path) -> dict:
    from trl import DPOConfig, DPOTrainer

    tok, model = load_policy(policy)
    cfg = DPOConfig(**trainer_args(s, wb, "dpo", policy, pairs), beta=s.beta, max_length=s.max_length)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=dataset(pairs, PAIRS), processing_class=tok)
    metrics = fit(trainer, "dpo")
    save(trainer, out)
    return {**metrics, "reward_accuracy": logged(trainer, "rewards/accuracies"),
            "reward_margin": logged(trainer, "rewards/margins")}
