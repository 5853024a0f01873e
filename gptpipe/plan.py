"""The scaling planner: from depth and hardware to params, tokens, FLOPs, hours and cost.

Same sizing rule as the pipeline (gptpipe.model), Chinchilla's ~20 tokens per parameter, training
FLOPs = tokens x (6 x matmul params + attention), time = FLOPs / (GPUs x peak x MFU).
"""

from __future__ import annotations

from dataclasses import dataclass

from gptpipe import dist
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


def estimate(cfg, tokens: int, seq_len: int, gpus: int, peak: float, mfu: float, price: float) -> Plan:
    n = count_params(cfg)
    fpt = flops_per_token(cfg, seq_len)
    flops = fpt * tokens
    hours = flops / (gpus * peak * mfu) / 3600
    return Plan(n["total"], n["non_embedding"], tokens, fpt, flops, hours, hours * gpus * price)


def plan(depth: int, gpus: int, gpu: str = "h100", *, mfu: float = 0.4, vocab: int = 65536,
         seq_len: int = 2048, aspect_ratio: int = 64, head_dim: int = 128, kv_group: int = 1,
         token_ratio: float = 20.0, price: float | None = None) -> Plan:
    peak, default_price = GPUS[gpu]
    m = Model(depth=depth, aspect_ratio=aspect_ratio, head_dim=head_dim, kv_group=kv_group,
              max_seq_len=seq_len, width=None, n_head=None, n_kv_head=None)
    cfg = llama_config(m, vocab)
    tokens = int(token_ratio * count_params(cfg)["total"])
    return estimate(cfg, tokens, seq_len, gpus, peak, mfu, default_price if price is None else price)


def from_params(p, gpu: str = "h100", mfu: float = 0.4, price: float | None = None) -> Plan:
    """The pretrain stage of a Params as it would run: its model, token budget (the rule of gptpipe.pretrain)
    and pretrain.nnodes x pretrain.nproc devices at device.peak_flops; priced per hour of `gpu` ("cpu": free)."""
    cfg = llama_config(p.model, p.tokenizer.vocab_size)
    t = p.pretrain
    tokens = t.budget(count_params(cfg)["total"])
    return estimate(cfg, tokens, t.seq_len, t.nnodes * t.nproc, dist.peak_flops(p.device), mfu,
                    price if price is not None else GPUS[gpu][1] if gpu in GPUS else 0.0)


def describe_params(p, gpu: str = "h100", mfu: float = 0.4, price: float | None = None) -> str:
    """`describe` of `from_params`: pretrain as params.yaml sets it, on its devices (named `gpu` when CUDA)."""
    device = gpu if p.device.type == "cuda" else "cpu"
    return describe(from_params(p, device, mfu, price), "pretrain as params.yaml sets it", p.pretrain.nproc,
                    device, mfu, p.pretrain.nnodes)


def describe(p: Plan, what: str, gpus: int, gpu: str, mfu: float, nodes: int = 1) -> str:
    """`gpus` per node, on `nodes` nodes."""
    secs = p.hours * 3600
    took = f"{p.hours:,.2f} h" if secs >= 3600 else f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.2g} s"
    on = f"{gpus}x {gpu}"
    if nodes > 1:
        on = f"{nodes} nodes x {on} ({nodes * gpus} {'processes' if gpu == 'cpu' else 'GPUs'})"
    return (f"{what}: {si(p.params)} params ({si(p.params_non_embedding)} non-embedding), {si(p.tokens)} tokens "
            f"({p.tokens / p.params:.2g} per param), {p.flops_per_token / 1e9:.3g} GFLOP/token, {p.flops:.3g} FLOPs\n"
            f"on {on} at {100 * mfu:.0f}% MFU: {took}, ~${p.cost:,.0f}")


def si(n: float) -> str:
    """562M, 11.2B, 1.84M: three significant digits and a unit."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"
