"""Midtraining: the base model keeps training with our loop on corpus text mixed with chat
conversations rendered by the tokenizer's chat template, so it learns the conversation format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptpipe import ckpt, dist, loop
from gptpipe.config import Params
from gptpipe.dist import Proc
from gptpipe.errors import UserError
from gptpipe.io import read_jsonl
from gptpipe.model import flops_per_token, load_pretrained, save
from gptpipe.shards import META, Shards, sample_windows


def chat_stream(tok, conversations: list[dict]) -> np.ndarray:
    """Every conversation rendered with the chat template (each starts with <|bos|>), concatenated."""
    ids = tok.apply_chat_template([c["messages"] for c in conversations], tokenize=True, return_dict=True)["input_ids"]
    return np.fromiter((i for conv in ids for i in conv), dtype=np.int64)


def run(p: Params, proc: Proc, *, base: Path, tokens: Path, conversations: Path, out: Path | None,
        ckpt_root: Path = Path("checkpoints/midtrain")) -> dict:
    """The midtrain stage: `base` trained on corpus text and chat, saved to `out` by rank 0; resumable."""
    t = p.midtrain
    tok, model = load_pretrained(base, dtype=torch.float32)
    corpus, val = Shards(tokens, "train"), Shards(tokens, "val")
    if model.config.vocab_size != corpus.vocab_size:
        raise UserError(f"{base} has a {model.config.vocab_size}-token vocabulary but {tokens} has "
                        f"{corpus.vocab_size}: rerun `dvc repro pretrain`")
    chat = chat_stream(tok, read_jsonl(conversations, ("messages",), made_by="tasks"))
    n_chat = round(t.batch_size * t.chat_fraction)
    if proc.main:
        print(f"midtrain: {len(chat):,} chat tokens, {corpus.tokens:,} corpus tokens; {n_chat} of "
              f"{t.batch_size} sequences per micro-batch are chat", flush=True)

    def batch_fn(step: int, micro: int):
        rng = np.random.default_rng([t.seed, step, micro, proc.rank])
        parts = []
        if n_chat:
            parts.append(sample_windows([chat], n_chat, t.seq_len, rng))
        if t.batch_size > n_chat:
            parts.append(corpus.sample(t.batch_size - n_chat, t.seq_len, rng))
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    config = p.made_with("midtrain")
    run = loop.Run("midtrain", batch_fn, list(val.windows(t.seq_len, t.eval_tokens)), t.budget(model.num_parameters()),
                   ckpt_root, ckpt.key(config, tokens / META, base / "model.safetensors", conversations),
                   flops_per_token(model.config, t.seq_len), dist.peak_flops(p.device), p.wandb, config)
    metrics = loop.train(model, t, proc, run)
    if out is not None and proc.main:
        save(model, tok, out)
    return {**metrics, "chat_tokens": int(len(chat))}
