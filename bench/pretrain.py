"""Pretrain against a minimal hand-written GPT loop of the same shape, in one run: speed, or quality in equal time.

    python bench/pretrain.py                       # speed: the params.yaml shape on this machine's device
    python bench/pretrain.py --steps 30 --set pretrain.compile=true --set model.depth=12 ...
    python bench/pretrain.py --equal-time          # quality: needs data/tokens (`dvc repro tokenize`)
    python bench/pretrain.py --equal-time --seconds 120

Speed prints tokens/s and MFU of each and their ratio, plus the data loader alone (it must never be the limit).
The reference model has the same FLOPs per token as ours (RoPE, RMSNorm, SwiGLU, GQA, untied head), so
the ratio measures the cost of our loop and of the HF module, not of a different architecture.

Equal time trains both on the real token shards for the same wall time, model build and compile included:
our pretrain stage's loop with its params (or with pretrain.tokens scaled to --seconds from a short probe),
and the reference loop, a plain nanoGPT-style AdamW loop (warmup, then cosine over the time budget). It
prints each one's val bits/byte over the whole val split, tokens/s and MFU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

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


def reference(cfg, t, proc, data: Shards, lr: float, *, steps: int | None = None,
              seconds: float | None = None) -> tuple[nn.Module, dict]:
    """The reference loop, AdamW on every parameter: `steps` steps at a flat lr (speed), or `seconds` of wall time,
    model build and compile included, with warmup then cosine over the time (quality). -> (model, stats)"""
    t0 = time.perf_counter()
    torch.manual_seed(t.seed)
    model = GPT(cfg, t.seq_len).to(proc.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                            fused=proc.device.type == "cuda")
    fwd = torch.compile(model) if t.compile else model
    accum = t.total_batch_tokens // (t.batch_size * t.seq_len)
    step, timed, secs = 0, 0, 0.0
    while step < steps if seconds is None else (elapsed := time.perf_counter() - t0) < seconds:
        if seconds is not None:
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / t.warmup_steps) * \
                    (t.min_lr_frac + (1 - t.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * elapsed / seconds)))
        t1 = time.perf_counter()
        for micro in range(accum):
            x, y = data.sample(t.batch_size, t.seq_len, np.random.default_rng([t.seed, step, micro]))
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
        if step >= 2:  # after compile's warm-up steps
            timed, secs = timed + t.total_batch_tokens, secs + time.perf_counter() - t1
        step += 1
    return model, {"steps": step, "seconds": time.perf_counter() - t0, "tokens_per_s": timed / max(secs, 1e-9)}


class AsCausalLM(nn.Module):
    """The reference GPT behind the interface our val scoring reads: config.max_position_embeddings, .logits."""

    def __init__(self, gpt: GPT, seq_len: int):
        super().__init__()
        self.gpt, self.config = gpt, SimpleNamespace(max_position_embeddings=seq_len)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.gpt(input_ids))


def equal_time(p, proc, seconds: float | None, ref_lr: float) -> None:
    from gptpipe import evaluate, pretrain, tokenizer

    tokens, tok_dir = Path("data/tokens").resolve(), Path("data/tokenizer").resolve()
    val = Shards(tokens, "val")  # names the fix when tokenize has not run
    token_bytes = torch.tensor(tokenizer.token_bytes(tokenizer.load(tok_dir)))
    whole = SimpleNamespace(tokens=None, batch_size=16)  # what bpb_model reads of evaluate params: the whole split
    cfg = llama_config(p.model, val.vocab_size)
    fpt, peak, t = flops_per_token(cfg, p.pretrain.seq_len), dist.peak_flops(p.device), p.pretrain

    def ours(q, tmp: Path) -> tuple[float, dict]:
        t0 = time.perf_counter()
        m = pretrain.run(q, proc, tokens=tokens, tokenizer=tok_dir, out=tmp / "model", ckpt_root=tmp / "ck")
        return time.perf_counter() - t0, m

    os.environ["WANDB_MODE"] = "disabled"
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the loop writes plots/ and logs/: keep them out of the workspace
        if seconds is not None:  # a probe gives start-up and step time; the real run gets the steps that fit
            probe_steps = 12
            wall, m = ours(p.model_copy(update={"pretrain": t.model_copy(
                update={"tokens": probe_steps * t.total_batch_tokens, "eval_every": 10**9})}), Path(tmp, "probe"))
            step_s = t.total_batch_tokens / m["tokens_per_s"]
            steps = int((seconds - (wall - probe_steps * step_s)) / step_s)
            t = t.model_copy(update={"tokens": max(1, steps) * t.total_batch_tokens})
            p = p.model_copy(update={"pretrain": t})
        wall, m = ours(p, Path(tmp))
        from transformers import LlamaForCausalLM
        our_bpb = evaluate.bpb_model(LlamaForCausalLM.from_pretrained(Path(tmp, "model")), val, token_bytes, whole,
                                     proc.device)
        ref, r = reference(cfg, t, proc, Shards(tokens, "train"), ref_lr, seconds=seconds or wall)
        ref_bpb = evaluate.bpb_model(AsCausalLM(ref, t.seq_len), val, token_bytes, whole, proc.device)

    print(f"\ndevice {proc.label}, depth {p.model.depth}, width {cfg.hidden_size}, seq {t.seq_len}, "
          f"{t.total_batch_tokens:,} tok/step; val bits/byte over the whole val split ({our_bpb[1]:,} bytes)")
    print(f"{'loop':<34}{'seconds':>9}{'steps':>7}{'tokens/s':>10}{'MFU':>8}{'val bpb':>9}")
    for name, s, n, tps, bpb in [(f"gptpipe ({t.optimizer})", wall, m["steps"], m["tokens_per_s"], our_bpb[0]),
                                 (f"minimal GPT (AdamW lr {ref_lr:g})", r["seconds"], r["steps"], r["tokens_per_s"],
                                  ref_bpb[0])]:
        print(f"{name:<34}{s:>9.1f}{n:>7}{tps:>10,.0f}{100 * fpt * tps / peak:>7.2f}%{bpb:>9.3f}")
    print(f"gptpipe's bits/byte is {100 * (1 - our_bpb[0] / ref_bpb[0]):.1f}% below the reference's in equal time")


def fake_shards(root: Path, vocab: int, n: int) -> Shards:
    """Random tokens in the real shard format, so both loops read through the real loader."""
    np.random.default_rng(0).integers(0, vocab, n, dtype=np.uint16).tofile(root / "train_0000.bin")
    meta = {"dtype": "uint16", "vocab_size": vocab, "bos_id": 0,
            "splits": {"train": {"files": [{"file": "train_0000.bin", "tokens": n}], "tokens": n}}}
    (root / "meta.json").write_text(json.dumps(meta))
    return Shards(root, "train")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="speed: timed steps of each loop")
    ap.add_argument("--equal-time", action="store_true", help="quality: both loops for the same wall time")
    ap.add_argument("--seconds", type=float, help="equal time: the budget (default: what our loop takes at "
                    "pretrain.tokens)")
    ap.add_argument("--ref-lr", type=float, default=3e-3, help="equal time: the reference loop's AdamW lr")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    p = load_params(overrides=args.set)
    t, proc = p.pretrain, dist.setup(p.device)
    if args.equal_time:
        return equal_time(p, proc, args.seconds, args.ref_lr)
    cfg = llama_config(p.model, p.tokenizer.vocab_size)
    fpt = flops_per_token(cfg, t.seq_len)
    peak = dist.peak_flops(p.device)

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
        ref = reference(cfg, t, proc, data, t.lr, steps=args.steps)[1]["tokens_per_s"]

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
