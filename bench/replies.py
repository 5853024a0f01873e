"""Replies from `sample.replies` (each prompt run once, its KV cache copied to every reply) against transformers'
`generate` (a greedy call, then a sampled one with num_return_sequences, as the pairs stage ran before), and
`sample.replies` in one process of all threads against one forked process per thread (its default on a CPU).

    python bench/replies.py [--model models/sft --prompts 2048 --samples 4 --batch 64]

Prints seconds for each, their ratios, and whether the replies are the same. Needs a `dvc repro` (the
model and data/raw/tasks/rl.jsonl).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gptpipe import sample
from gptpipe.io import read_jsonl
from gptpipe.model import load_pretrained

NEW_TOKENS = 12  # per reply, as pairs.max_new_tokens: both loops decode the same length


def generate(model, tok, prompts: list, batch: int, k: int, temperature: float) -> list[list[str]]:
    sampling = {"do_sample": True, "temperature": temperature, "top_k": None, "top_p": 1.0} if temperature \
        else {"do_sample": False}
    out = []
    for i in range(0, len(prompts), batch):
        enc = tok.apply_chat_template(prompts[i:i + batch], add_generation_prompt=True, padding=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=NEW_TOKENS, num_return_sequences=k,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **sampling)
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [texts[j:j + k] for j in range(0, len(texts), k)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/sft"))
    ap.add_argument("--prompts", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    rows = read_jsonl(Path("data/raw/tasks/rl.jsonl"), ("prompt",), made_by="tasks")[:a.prompts]
    prompts = [r["prompt"] for r in rows]
    tok, model = load_pretrained(a.model, dtype=torch.float32)
    sample.replies(model, tok, prompts[:a.batch], "cpu", a.batch)  # warm-up; also sets left padding
    sample.use_inverse_cdf()
    t = time.perf_counter()
    greedy = generate(model, tok, prompts, a.batch, 1, 0.0)
    torch.manual_seed(0)
    generate(model, tok, prompts, a.batch, a.samples, 1.0)
    old = time.perf_counter() - t
    ask = dict(k=a.samples, temperature=1.0, greedy=True)
    t = time.perf_counter()
    one = sample.replies(model, tok, prompts, "cpu", a.batch, NEW_TOKENS, **ask, procs=1)
    now = time.perf_counter() - t
    t = time.perf_counter()
    forked = sample.replies(model, tok, prompts, "cpu", a.batch, NEW_TOKENS, **ask)
    par = time.perf_counter() - t
    same = sum(g == n[:1] for g, n in zip(greedy, one))
    threads = torch.get_num_threads()
    print(f"{len(prompts)} prompts x (greedy + {a.samples} samples), {a.batch} prompts a batch, {threads} threads")
    print(f"generate: {old:.2f} s   sample.replies: {now:.2f} s   ratio {old / now:.2f}x   "
          f"greedy replies alike: {same}/{len(prompts)}")
    print(f"sample.replies in {threads} forked processes of 1 thread: {par:.2f} s   ratio {now / par:.2f}x   "
          f"replies alike: {sum(x == y for x, y in zip(one, forked))}/{len(prompts)}")


if __name__ == "__main__":
    main()
