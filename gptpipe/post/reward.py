"""The reward model: the SFT model with a scalar head, trained by TRL's RewardTrainer on preference pairs.

Bradley-Terry loss: the chosen reply should score above the rejected one. The stage saves a stock
`AutoModelForSequenceClassification` dir; evaluate measures its pairwise accuracy on held-out pairs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptpipe.config import Params
from gptpipe.model import load_pretrained
from gptpipe.post.common import dataset, fit, for_training, logged, save, trainer_args
from gptpipe.tasks import PAIRS


def load(path: Path, fresh_head: bool = False):
    """A reward model as a 1-label sequence classifier and its tokenizer; with `fresh_head`, the SFT model it
    starts from (its score head is new). Without it, a dir lacking a trained head is refused."""
    from transformers import AutoModelForSequenceClassification

    tok, model = load_pretrained(path, AutoModelForSequenceClassification, new_head="score." if fresh_head else None,
                                 num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id  # the score is read at the last token before the padding
    return tok, model


def train(p: Params, proc, *, policy: Path, pairs: Path, out: Path) -> dict:
    """The reward stage: models/sft plus a scalar head, trained on the preference pairs."""
    from trl import RewardConfig, RewardTrainer

    s, wb = p.reward, p.wandb
    torch.manual_seed(s.seed)  # the new score head's init: the same seed makes the same reward model
    tok, model = load(policy, fresh_head=True)
    model = for_training(model)
    cfg = RewardConfig(**trainer_args(s, wb, "reward", policy, pairs), max_length=s.max_length)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=dataset(pairs, PAIRS, "pairs"), processing_class=tok)
    metrics = fit(trainer, "reward")
    save(trainer, out)
    return {**metrics, "train_pair_accuracy": logged(trainer, "accuracy")}
