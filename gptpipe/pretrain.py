"""Pretraining: a freshly initialised Llama trained on the token shards, saved as an HF directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from gptpipe import ckpt, dist, loop
from gptpipe.config import Params
from gptpipe.dist import Proc
from gptpipe.errors import UserError
from gptpipe.model import count_params, flops_per_token, llama_config, save
from gptpipe.shards import META, Shards


def run(p: Params, proc: Proc, *, tokens: Path, tokenizer: Path, out: Path | None,
        ckpt_root: Path = Path("checkpoints/pretrain")) -> dict:
    """The pretrain stage: a fresh Llama trained on the token shards, saved to `out` by rank 0; resumable."""
    train_data, val_data = Shards(tokens, "train"), Shards(tokens, "val")
    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)  # saved with the model: see model.load_pretrained
    if len(tok) != train_data.vocab_size:
        raise UserError(f"{tokenizer} has {len(tok)} tokens but {tokens} was made with "
                        f"{train_data.vocab_size}: rerun `dvc repro tokenize`")
    t = p.pretrain
    cfg = llama_config(p.model, train_data.vocab_size)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    counts = count_params(cfg)
    fpt = flops_per_token(cfg, t.seq_len)
    chinchilla = 20 * counts["total"]
    total_tokens = t.budget(counts["total"])
    if proc.main:
        print(f"model: {p.model.depth} layers, width {cfg.hidden_size}, {cfg.num_attention_heads} heads "
              f"({cfg.num_key_value_heads} kv), {counts['total'] / 1e6:.2f}M params "
              f"({counts['non_embedding'] / 1e6:.2f}M non-embedding), {fpt / 1e6:.1f} MFLOP/token, "
              f"Chinchilla-optimal {chinchilla / 1e6:.1f}M tokens; training on {total_tokens / 1e6:.2f}M "
              f"({total_tokens / counts['total']:.1f} tokens/param)", flush=True)

    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(cfg)

    def batch_fn(step: int, micro: int):
        rng = np.random.default_rng([t.seed, step, micro, proc.rank])
        return train_data.sample(t.batch_size, t.seq_len, rng)

    config = p.made_with("model", "pretrain")
    run = loop.Run("pretrain", batch_fn, list(val_data.windows(t.seq_len, t.eval_tokens)), total_tokens, ckpt_root,
                   ckpt.key(config, tokens / META), fpt, dist.peak_flops(p.device), p.wandb, config)
    metrics = loop.train(model, t, proc, run)
    if out is not None and proc.main:
        save(model, tok, out)
    return {**metrics, "params": counts["total"], "params_non_embedding": counts["non_embedding"],
            "chinchilla_tokens": chinchilla, "tokens_per_param": round(total_tokens / counts["total"], 2)}
