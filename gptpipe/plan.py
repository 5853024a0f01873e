"""The scaling planner: from depth and hardware to params, tokens, FLOPs, hours and cost.

Same sizing rule as the pipeline (gptpipe.model), Chinchilla's ~20 tokens per parameter, training
FLOPs = tokens x (6 x matmul params + attention), time = FLOPs / (GPUs x peak x MFU).
"""

from __future__ import annotations

from dataclasses import dataclass

from gptpipe.config import Model
from gptpipe.model import count_params, flops_per_token, llama_config

# Dense bf16 peak FLOP/s per GPU (no sparsity) and a rough on-demand $/GPU-hour; override with flags.
GPUS = {
    "h100": (989e12, 3.00),
    "h200": (989e12, 3.50),
    "a100": (312e12, 1.50),
    "l40s": (362e12, 1.00),
    "4090": (165e12, 0.40),
}


@dataclass(frozen=True)
class Plan:
    params: int
    params_non_embedding: int
    tokens: int
    flops_per_token: float
    flops: float
    hours: float
    cost: float


def plan(depth: int, gpus: int, gpu: str = "h100", *, mfu: float = 0.4, vocab: int = 65536,
         seq_len: int = 2048, aspect_ratio: int = 64, head_dim: int = 128, kv_group: int = 1,
         token_ratio: float = 20.0, price: float | None = None) -> Plan:
    peak, default_price = GPUS[gpu]
    m = Model(depth=depth, aspect_ratio=aspect_ratio, head_dim=head_dim, kv_group=kv_group,
              max_seq_len=seq_len, width=None, n_head=None, n_kv_head=None)
    cfg = llama_config(m, vocab)
    n = count_params(cfg)
    tokens = int(token_ratio * n["total"])
    fpt = flops_per_token(cfg, seq_len)
    flops = fpt * tokens
    hours = flops / (gpus * peak * mfu) / 3600
    return Plan(n["total"], n["non_embedding"], tokens, fpt, flops, hours,
                hours * gpus * (default_price if price is None else price))


def describe(p: Plan, depth: int, gpus: int, gpu: str, mfu: float) -> str:
    return (f"depth {depth}: {p.params / 1e6:,.0f}M params ({p.params_non_embedding / 1e6:,.0f}M non-embedding), "
            f"{p.tokens / 1e9:,.2f}B tokens (Chinchilla 20x), {p.flops_per_token / 1e9:.2f} GFLOP/token, "
            f"{p.flops:.3g} FLOPs\n"
            f"on {gpus}x {gpu} at {100 * mfu:.0f}% MFU: {p.hours:,.2f} h, ~${p.cost:,.0f}")
