"""Pretrain throughput: gptpipe's loop (HF Llama) vs a minimal hand-written GPT loop, same shape, one run.

    python bench/pretrain.py                       # the params.yaml shape on this machine's device
    python bench/pretrain.py --steps 30 --set pretrain.compile=true --set model.depth=12 ...

Prints tokens/s and MFU of each and their ratio, plus the data loader alone (it must never be the limit).
The reference model has the same FLOPs per token as ours (RoPE, RMSNorm, SwiGLU, GQA, untied head), so
the ratio measures the cost of our loop and of the HF module, not of a different architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptpipe import dist, loop  # noqa: E402
from gptpipe.config import load_params  # noqa: E402
from gptpipe.model import flops_per_token, llama_config  # noqa: E402
from gptpipe.shards import Shards  # noqa: E402


# ---------------------------------------------------------------- the minimal reference GPT
def rope(x, cos, sin):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, d, h, kv, f):
        super().__init__()
        self.h, self.kv, self.hd = h, kv, d // h
        self.n1, self.n2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.q, self.k, self.v = nn.Linear(d, d, bias=False), nn.Linear(d, kv * self.hd, bias=False), \
            nn.Linear(d, kv * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up, self.down = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), \
            nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        y = self.n1(x)
        q = rope(self.q(y).view(B, T, self.h, self.hd).transpose(1, 2), cos, sin)
        k = rope(self.k(y).view(B, T, self.kv, self.hd).transpose(1, 2), cos, sin)
        v = self.v(y).view(B, T, self.kv, self.hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        y = self.n2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class GPT(nn.Module):
    def __init__(self, cfg, seq_len):
        super().__init__()
        d, h = cfg.hidden_size, cfg.num_attention_heads
        self.emb = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(d, h, cfg.num_key_value_heads, cfg.intermediate_size)
                                    for _ in range(cfg.num_hidden_layers))
        self.norm, self.head = nn.RMSNorm(d, eps=1e-5), nn.Linear(d, cfg.vocab_size, bias=False)
        hd = d // h
        freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(seq_len).float(), freq)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, idx):
        x = self.emb(idx)
        cos, sin = self.cos[: idx.shape[1]], self.sin[: idx.shape[1]]
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.head(self.norm(x))


def reference_tokens_per_s(cfg, t, proc, data, steps) -> float:
    torch.manual_seed(0)
    model = GPT(cfg, t.seq_len).to(proc.device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, fused=proc.device.type == "cuda")
    fwd = torch.compile(model) if t.compile else model
    accum = t.total_batch_tokens // (t.batch_size * t.seq_len)
    timed, secs = 0, 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        for micro in range(accum):
            x, y = data.sample(t.batch_size, t.seq_len, np.random.default_rng([step, micro]))
            x, y = x.to(proc.device), y.to(proc.device)
            with loop.autocast(t, proc.device):
                loss = F.cross_entropy(fwd(x).float().flatten(0, 1), y.flatten()) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        if proc.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            timed, secs = timed + t.total_batch_tokens, secs + time.perf_counter() - t0
    return timed / secs


def fake_shards(root: Path, vocab: int, n: int) -> Shards:
    """Random tokens in the real shard format, so both loops read through the real loader."""
    np.random.default_rng(0).integers(0, vocab, n, dtype=np.uint16).tofile(root / "train_0000.bin")
    meta = {"dtype": "uint16", "vocab_size": vocab, "bos_id": 0,
            "splits": {"train": {"files": [{"file": "train_0000.bin", "tokens": n}], "tokens": n}}}
    (root / "meta.json").write_text(json.dumps(meta))
    return Shards(root, "train")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    p = load_params(overrides=args.set)
    t, proc = p.pretrain, dist.setup(p.device)
    cfg = llama_config(p.model, p.tokenizer.vocab_size)
    fpt = flops_per_token(cfg, t.seq_len)
    peak = p.device.peak_flops

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the loop writes plots/ and logs/: keep them out of the workspace
        data = fake_shards(Path(tmp), cfg.vocab_size, 4_000_000)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            n += data.sample(t.batch_size, t.seq_len, np.random.default_rng(n))[0].numel()
        loader = n / (time.perf_counter() - t0)

        from transformers import LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        batch_fn = lambda s, mi: data.sample(t.batch_size, t.seq_len, np.random.default_rng([s, mi]))
        m = loop.train(model, t, proc, loop.Run("bench", batch_fn, list(data.windows(t.seq_len, 4 * t.seq_len)),
                                                args.steps * t.total_batch_tokens, Path(tmp) / "ck", "bench", fpt, peak))
        ours = m["tokens_per_s"]
        ref = reference_tokens_per_s(cfg, t, proc, data, args.steps)

    mem = torch.cuda.max_memory_allocated() / 2**30 if proc.device.type == "cuda" else float("nan")
    print(f"\ndevice {proc.label}, depth {p.model.depth}, width {cfg.hidden_size}, seq {t.seq_len}, "
          f"{t.total_batch_tokens:,} tok/step, dtype {t.dtype}, compile {t.compile}, {fpt / 1e6:.1f} MFLOP/token")
    print(f"{'loop':<28}{'tokens/s':>12}{'MFU':>9}")
    for name, tps in [("gptpipe (HF Llama)", ours), ("minimal GPT (hand-written)", ref)]:
        print(f"{name:<28}{tps:>12,.0f}{100 * fpt * tps / peak:>8.1f}%")
    print(f"ratio gptpipe / minimal: {ours / ref:.2f}x   peak GPU memory: {mem:.1f} GiB")
    print(f"data loader alone: {loader:,.0f} tokens/s = {loader / ours:.0f}x what training consumes")


if __name__ == "__main__":
    main()
