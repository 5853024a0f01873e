"""Supervised fine-tuning with TRL's SFTTrainer: the loss covers the assistant's tokens, plus corpus text.

The chat template marks assistant turns with {% generation %}, which gives the assistant-token mask. On
its own, that loss teaches a small model to answer and to forget everything else (val bits/byte rose
3x on the default run), so `text_fraction` of the rows are windows of pretraining text, every token in
the loss: nanochat's mixing of corpus text into chat training, here as pre-tokenized rows whose labels
say which tokens count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptpipe.config import SFT, Params, Wandb
from gptpipe.io import read_jsonl
from gptpipe.post.common import fit, load_policy, logged, save, trainer_args
from gptpipe.shards import Shards

IGNORE = -100  # the label of a token outside the loss


def examples(tok, conversations: Path, tokens: Path, s: SFT) -> list[dict]:
    """Pre-tokenized rows {input_ids, labels}: each conversation (labels on the assistant's tokens), then
    corpus windows of max_length tokens (labels on all) until they are text_fraction of the rows."""
    chats = [r["messages"] for r in read_jsonl(conversations, ("messages",), made_by="tasks")]
    enc = tok.apply_chat_template(chats, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    rows = [{"input_ids": ids[:s.max_length], "labels": [t if m else IGNORE for t, m in zip(ids, mask)][:s.max_length]}
            for ids, mask in zip(enc["input_ids"], enc["assistant_masks"])]
    n_text = round(len(rows) * s.text_fraction / (1 - s.text_fraction))
    if n_text:
        x, _ = Shards(tokens, "train").sample(n_text, s.max_length, np.random.default_rng(s.seed))
        rows += [{"input_ids": w, "labels": w} for w in x.tolist()]
    return rows


def make_trainer(s: SFT, wb: Wandb, *, policy: Path, conversations: Path, tokens: Path, stage: str = "sft",
                 peft_config=None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, model = load_policy(policy)
    cfg = SFTConfig(**trainer_args(s, wb, stage, policy, conversations, tokens), max_length=s.max_length,
                    packing=False)
    return SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(examples(tok, conversations, tokens, s)),
                      processing_class=tok, peft_config=peft_config)


def train(p: Params, proc, *, policy: Path, conversations: Path, tokens: Path, out: Path) -> dict:
    """The sft stage: models/mid -> models/sft on the task conversations, loss on the replies, plus corpus text."""
    trainer = make_trainer(p.sft, p.wandb, policy=policy, conversations=conversations, tokens=tokens)
    metrics = fit(trainer, "sft")
    save(trainer, out)
    tokens_seen = logged(trainer, "num_tokens") or 0
    return {**metrics, "mean_token_accuracy": logged(trainer, "mean_token_accuracy"),
            "tokens_per_s": round(tokens_seen / metrics["train_s"], 1)}
