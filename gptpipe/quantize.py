"""Weight-only quantization of the final chat model with torchao, saved as safetensors.

torchao is the maintained path for this torch (torch.ao.quantization is being retired into it).
transformers quantizes while loading (`TorchAoConfig`) and saves torchao's tensors as plain safetensors
with JSON metadata, so loading back needs no pickle and no gptpipe code: stock `from_pretrained`.

Schemes: int8 weight-only (CPU and CUDA; activations stay float) and, on CUDA, int4 weight-only with
groupwise scales. Embeddings stay float: torchao quantizes linear layers (the lm_head included).
Measured on 2 CPU cores (the 1.8 M-param default model): weights 7.15 → 4.98 MB, val bpb +0.001, task
accuracy unchanged, but generation 522 → 283 tokens/s: at this size nothing waits on memory, so
dequantizing each weight costs more than it saves. Weight-only int8/int4 pays off where decoding is
memory-bound (large models, GPUs).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import torch

from gptpipe.config import Params, Quantize
from gptpipe.dist import Proc
from gptpipe.errors import UserError
from gptpipe.model import load_pretrained

PROMPT = "def main():"  # the fixed prompt generation speed is timed on


def config(q: Quantize, device: torch.device):
    """The torchao config of a scheme, refusing what this device cannot run before any work."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if q.scheme == "int4":
        if device.type != "cuda":
            raise UserError("quantize.scheme: int4 weight-only needs CUDA (torchao's int4 kernels); "
                            "use int8 on CPU")
        return Int4WeightOnlyConfig(group_size=q.group_size)
    return Int8WeightOnlyConfig()


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's metadata in key order, in place. safetensors keeps the metadata in a hash map
    whose order changes from one save to the next, and torchao writes an entry per tensor: the same weights made
    files with different bytes, and every stage after quantize reran. Same JSON, reordered: same length."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:
            raise RuntimeError(f"{path}: its header sorted is longer than before ({len(text)} > {n} bytes)")
        f.seek(8)
        f.write(text.ljust(n))


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files alone: what quantization shrinks (tokenizer files are the same)."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def tokens_per_s(model, tok, device: torch.device, new_tokens: int, repeats: int = 3) -> float:
    """Greedy generation speed with the KV cache: `new_tokens` forced tokens, best of `repeats`."""
    ids = tok(PROMPT, return_tensors="pt").input_ids.to(device)
    best = float("inf")
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return new_tokens / best


def run(p: Params, proc: Proc, *, source: Path, out: Path) -> dict:
    """The quantize stage: out = `source` (export.model) quantized; returns sizes and generation speeds before
    and after (the quality cost is the evaluate stage's to measure: it scores "quantized" beside its source)."""
    from transformers import TorchAoConfig

    q, device = p.quantize, proc.device
    scheme = config(q, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok, ref = load_pretrained(source, dtype=dtype)
    ref.to(device).eval()
    before = tokens_per_s(ref, tok, device, q.bench_tokens)
    del ref
    _, model = load_pretrained(source, dtype=dtype, device_map=str(device), quantization_config=TorchAoConfig(scheme))
    model.eval()
    after = tokens_per_s(model, tok, device, q.bench_tokens)
    model.save_pretrained(out)
    for f in Path(out).glob("*.safetensors"):
        sort_metadata(f)
    tok.save_pretrained(out)
    m = {"model": p.export.model, "scheme": q.scheme, "bytes_before": weights_bytes(source),
         "bytes_after": weights_bytes(out), "tokens_per_s_before": round(before, 1), "tokens_per_s_after": round(after, 1)}
    print(f"quantize: {m['model']} -> {q.scheme}: {m['bytes_before'] / 1e6:.2f} -> {m['bytes_after'] / 1e6:.2f} MB "
          f"({m['bytes_before'] / m['bytes_after']:.2f}x smaller); generation {before:.0f} -> {after:.0f} tokens/s "
          f"on {proc.label}")
    return m
