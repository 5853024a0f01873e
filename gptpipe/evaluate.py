"""Evaluation: validation bits-per-byte against a unigram baseline, and generated samples.

Bits-per-byte is tokenizer-independent (nanochat's definition): the summed next-token loss in nats
over the summed UTF-8 bytes of the target tokens, divided by ln 2. Special tokens stand for no text,
so targets that are special tokens count neither nats nor bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptpipe.config import Evaluate
from gptpipe.shards import Shards


def row(model: str, task: str, metric: str, value: float, n: int, stderr: float | None = None) -> dict:
    return {"model": model, "task": task, "metric": metric, "value": value, "n": n, "stderr": stderr}


def bpb_model(model, val: Shards, token_bytes: torch.Tensor, e: Evaluate, device) -> tuple[float, int]:
    """(bits per byte, target bytes) of `model` on the first e.tokens validation tokens."""
    seq_len = model.config.max_position_embeddings
    windows = list(val.windows(seq_len, e.tokens))
    nats, nbytes = 0.0, 0
    model.eval().to(device)
    with torch.no_grad():
        for i in range(0, len(windows), e.batch_size):
            rows = torch.stack(windows[i:i + e.batch_size]).to(device)
            x, y = rows[:, :-1], rows[:, 1:]
            logits = model(input_ids=x).logits.float()
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            b = token_bytes.to(device)[y.flatten()]
            nats += (loss * (b > 0)).sum().item()
            nbytes += b.sum().item()
    return nats / nbytes / math.log(2), nbytes


def bpb_unigram(train: Shards, val: Shards, token_bytes: torch.Tensor, seq_len: int, max_tokens: int) -> float:
    """The same metric for a model that ignores context: add-one smoothed token frequencies of train."""
    counts = np.zeros(train.vocab_size, dtype=np.float64)
    for a in train.arrays:
        counts += np.bincount(a, minlength=train.vocab_size)
    logp = torch.from_numpy(np.log(counts + 1) - np.log(counts.sum() + train.vocab_size))
    nats, nbytes = 0.0, 0
    for w in val.windows(seq_len, max_tokens):
        y = w[1:]
        b = token_bytes[y]
        nats -= (logp[y] * (b > 0)).sum().item()
        nbytes += b.sum().item()
    return nats / nbytes / math.log(2)


def samples(model, tok, e: Evaluate, device, name: str) -> list[dict]:
    """One completion per prompt, sampled with the KV cache (HF generate)."""
    torch.manual_seed(e.seed)
    out = []
    for prompt in e.prompts:
        ids = tok(tok.bos_token + prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        sampling = {"do_sample": True, "temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p} \
            if e.temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=e.max_new_tokens, use_cache=True,
                                 pad_token_id=tok.pad_token_id, **sampling)
        out.append({"model": name, "prompt": prompt,
                    "completion": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)})
    return out


def task_accuracy(model, tok, rows: list[dict], device, name: str, batch: int = 32,
                  max_new_tokens: int = 12) -> tuple[list[dict], list[dict]]:
    """Greedy answers to held-out task prompts (batched, left-padded, KV cache), scored by exact match.

    Returns eval rows (accuracy per task and overall, with binomial standard errors) and a few samples.
    """
    from gptpipe.tasks import check

    tok.padding_side = "left"
    model.eval().to(device)
    correct: dict[str, list[bool]] = {}
    samples = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        enc = tok.apply_chat_template([r["prompt"] for r in chunk], add_generation_prompt=True, padding=True,
                                      return_tensors="pt", return_dict=True).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for r, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
            reply = tok.decode(ids, skip_special_tokens=True)
            correct.setdefault(r["task"], []).append(check(reply, r["answer"]))
            if len(samples) < 8:
                samples.append({"model": name, "prompt": r["prompt"][-1]["content"], "completion": reply})

    def acc_row(task: str, hits: list[bool]) -> dict:
        p = sum(hits) / len(hits)
        return row(name, task, "accuracy", p, len(hits), math.sqrt(p * (1 - p) / len(hits)))

    rows_out = [acc_row(t, hits) for t, hits in sorted(correct.items())]
    rows_out.append(acc_row("tasks", [h for hits in correct.values() for h in hits]))
    return rows_out, samples


def evaluate_model(name: str, model_dir: Path, tokens: Path, tokenizer_dir: Path, e: Evaluate, device,
                   task_rows: list[dict] | None = None, unigram: bool = False) -> dict:
    """Eval rows and samples of one model: val bits-per-byte, held-out task accuracy, free samples.

    With `unigram`, the unigram baseline's bits-per-byte on the same bytes comes along as its own row.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptpipe import tokenizer as tokenization

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    val = Shards(tokens, "val")
    tb = torch.tensor(tokenization.token_bytes(tokenization.load(tokenizer_dir)))
    bpb, nbytes = bpb_model(model, val, tb, e, device)
    rows = [row(name, "val", "bpb", bpb, nbytes)]
    if unigram:
        seq_len = model.config.max_position_embeddings
        rows.append(row("unigram", "val", "bpb", bpb_unigram(Shards(tokens, "train"), val, tb, seq_len, e.tokens), nbytes))
    out = samples(model, tok, e, device, name)
    if task_rows:
        acc, chat = task_accuracy(model, tok, task_rows, device, name, batch=e.batch_size)
        rows += acc
        out += chat
    return {"model": name, "rows": rows, "samples": out}


def evaluate_reward(name: str, model_dir: Path, pairs: list[dict], e: Evaluate, device) -> dict:
    """The reward model's pairwise accuracy on held-out preference pairs (chance: 0.5)."""
    from gptpipe.post import reward

    tok, model = reward.load(model_dir)
    acc, n = reward.pairwise_accuracy(model, tok, pairs, device, batch=e.batch_size)
    return {"model": name, "rows": [row(name, "prefs", "pairwise_accuracy", acc, n, math.sqrt(acc * (1 - acc) / n))],
            "samples": []}
