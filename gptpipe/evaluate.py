"""Evaluation: validation bits-per-byte against a unigram baseline, task accuracy, samples.

Bits-per-byte is tokenizer-independent (nanochat's definition): the summed next-token loss in nats
over the summed UTF-8 bytes of the target tokens, divided by ln 2. Special tokens stand for no text,
so targets that are special tokens count neither nats nor bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptpipe import choice, sample
from gptpipe.config import Evaluate, Params
from gptpipe.dist import Proc
from gptpipe.model import load_pretrained
from gptpipe.shards import Shards
from gptpipe.tasks import PAIRS


def row(model: str, task: str, metric: str, value: float, n: int, stderr: float | None = None) -> dict:
    return {"model": model, "task": task, "metric": metric, "value": value, "n": n, "stderr": stderr}


def rate_rows(model: str, metric: str, hits: dict[str, list[bool]], overall: str | None = "tasks") -> list[dict]:
    """A rate per task with its binomial standard error, and over all tasks as `overall`."""
    def rate(task: str, h: list[bool]) -> dict:
        p = sum(h) / len(h)
        return row(model, task, metric, p, len(h), math.sqrt(p * (1 - p) / len(h)))

    rows = [rate(t, h) for t, h in sorted(hits.items())]
    if overall and hits:
        rows.append(rate(overall, [x for h in hits.values() for x in h]))
    return rows


def bpb_model(model, val: Shards, token_bytes: torch.Tensor, e: Evaluate, device) -> tuple[float, int, list]:
    """(bits per byte, target bytes, [(nats, bytes)] per window) of `model` on the first e.tokens val tokens
    (all of them when e.tokens is None)."""
    seq_len = model.config.max_position_embeddings
    windows = list(val.windows(seq_len, e.tokens))
    per_window = []
    model.eval().to(device)
    with torch.no_grad():
        for i in range(0, len(windows), e.batch_size):
            rows = torch.stack(windows[i:i + e.batch_size]).to(device)
            x, y = rows[:, :-1], rows[:, 1:]
            logits = model(input_ids=x).logits.float()
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
            b = token_bytes.to(device)[y]
            per_window += zip((loss * (b > 0)).sum(1).tolist(), b.sum(1).tolist())
    nats, nbytes = sum(n for n, _ in per_window), sum(b for _, b in per_window)
    return nats / nbytes / math.log(2), nbytes, per_window


def bpb_unigram(train: Shards, val: Shards, token_bytes: torch.Tensor, seq_len: int,
                max_tokens: int | None) -> tuple[float, list]:
    """The same metric for a model that ignores context: add-one smoothed token frequencies of train."""
    counts = np.zeros(train.vocab_size, dtype=np.float64)
    for a in train.arrays:
        counts += np.bincount(a, minlength=train.vocab_size)
    logp = torch.from_numpy(np.log(counts + 1) - np.log(counts.sum() + train.vocab_size))
    per_window = []
    for w in val.windows(seq_len, max_tokens):
        y = w[1:]
        b = token_bytes[y]
        per_window.append((-(logp[y] * (b > 0)).sum().item(), b.sum().item()))
    return sum(n for n, _ in per_window) / sum(b for _, b in per_window) / math.log(2), per_window


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
                  max_new_tokens: int = 12) -> tuple[list[dict], list[dict], list[bool]]:
    """Greedy answers to held-out task prompts, scored by exact match.

    Returns eval rows (accuracy per task and overall, with binomial standard errors), a few samples, and
    each question's hit in row order (for paired comparisons between models).
    """
    from gptpipe.tasks import check

    answers = sample.replies(model, tok, [r["prompt"] for r in rows], device, batch, max_new_tokens)
    hits = [check(a[0], r["answer"]) for r, a in zip(rows, answers)]
    correct: dict[str, list[bool]] = {}
    for r, h in zip(rows, hits):
        correct.setdefault(r["task"], []).append(h)
    samples = [{"model": name, "prompt": r["prompt"][-1]["content"], "completion": a[0]}
               for r, a in zip(rows[:8], answers)]
    return rate_rows(name, "accuracy", correct), samples, hits


@dataclass
class Suite:
    """What every model is scored on, prepared once: the same questions and bytes for all."""
    e: Evaluate
    val: Shards
    train: Shards
    token_bytes: torch.Tensor
    tasks: list[dict]             # held-out task rows: generated answers, exact match
    choice: list[choice.Item]     # multiple-choice questions: held-out tasks and val cloze


def suite(e: Evaluate, tokens: Path, tokenizer_dir: Path, task_rows: list[dict], pairs: list[dict]) -> Suite:
    """The evaluation suite; `pairs` (held-out preference pairs) give each task question its plausible wrong answer."""
    from transformers import AutoTokenizer

    from gptpipe import tokenizer as tokenization

    val = Shards(tokens, "val")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    wrong = {p["prompt"][-1]["content"]: p["rejected"][-1]["content"] for p in pairs}
    items = choice.chat_items(tok, task_rows, wrong, e.choice_items, e.choices, e.seed) + \
        choice.cloze_items(val.arrays, e.choice_items, e.choices, e.cloze_context, e.cloze_continuation, e.seed)
    return Suite(e, val, Shards(tokens, "train"), torch.tensor(tokenization.token_bytes(tokenization.load(tokenizer_dir))),
                 task_rows, items)


def evaluate_model(name: str, model_dir: Path, s: Suite, device, unigram: bool = False) -> dict:
    """Eval rows and samples of one model: val bits-per-byte, held-out task accuracy (generated and
    multiple-choice), val cloze, free samples.

    With `unigram`, the unigram baseline's bits-per-byte on the same bytes comes along as its own row.
    """
    tok, model = load_pretrained(model_dir, dtype=torch.float32)
    bpb, nbytes, windows = bpb_model(model, s.val, s.token_bytes, s.e, device)
    rows = [row(name, "val", "bpb", bpb, nbytes)]
    items = {"val": windows}  # per item, in a fixed order: what paired comparisons between models read
    if unigram:
        seq_len = model.config.max_position_embeddings
        value, items["unigram_val"] = bpb_unigram(s.train, s.val, s.token_bytes, seq_len, s.e.tokens)
        rows.append(row("unigram", "val", "bpb", value, nbytes))
    out = samples(model, tok, s.e, device, name)
    if s.tasks:
        acc, chat, items["tasks"] = task_accuracy(model, tok, s.tasks, device, name, batch=s.e.gen_batch_size)
        rows += acc
        out += chat
    if s.choice:
        hits = choice.hits(model, s.choice, device, s.e.batch_size, tok.pad_token_id)
        rows += rate_rows(name, "mc_accuracy", {t: h for t, h in hits.items() if t != "cloze"})
        rows += rate_rows(name, "mc_accuracy", {t: h for t, h in hits.items() if t == "cloze"}, overall=None)
        items["cloze"] = hits.get("cloze", [])
    return {"model": name, "rows": rows, "samples": out, "items": items}


@torch.no_grad()
def pairwise_accuracy(model, tok, rows: list[dict], device, batch: int = 32) -> tuple[float, int]:
    """Share of pairs whose chosen reply outscores the rejected one."""
    model.to(device).eval()
    tok.padding_side = "right"
    wins = 0
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        texts = [tok.apply_chat_template(r["prompt"] + r[side], tokenize=False) for side in ("chosen", "rejected")
                 for r in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        scores = model(**enc).logits[:, 0]
        wins += (scores[:len(chunk)] > scores[len(chunk):]).sum().item()
    return wins / len(rows), len(rows)


def evaluate_reward(name: str, model_dir: Path, pairs: list[dict], e: Evaluate, device) -> dict:
    """The reward model's pairwise accuracy on held-out preference pairs (chance: 0.5)."""
    from gptpipe.post import reward

    tok, model = reward.load(model_dir)
    acc, n = pairwise_accuracy(model, tok, pairs, device, batch=e.batch_size)
    return {"model": name, "rows": [row(name, "prefs", "pairwise_accuracy", acc, n, math.sqrt(acc * (1 - acc) / n))],
            "samples": []}


def run(p: Params, proc: Proc, *, tokens: Path, tokenizer: Path, tasks: Path, pairs: Path, out: Path, effects_json: Path,
        scores: Path, models: dict[str, tuple[str, str | None]] | None = None) -> dict:
    """The evaluate stage: every model of `models` (default: the models it depends on in dvc.yaml, with the stage
    that makes each and the model it starts from: gptpipe/artifacts.py) scored into out/<model>.json, and what
    each stage did to its target metric into `effects_json`. `scores`/<model>.json holds each model's
    headline numbers, one small table in `dvc metrics show metrics/eval`."""
    from gptpipe import artifacts, effects
    from gptpipe.io import read_jsonl, write_json

    if models is None:
        deps = artifacts.graph()["evaluate"]["deps"]
        models = {m: v for m, v in artifacts.models().items() if f"models/{m}" in deps}
    dirs = {m: artifacts.require(Path("models", m)) for m in models}
    task_rows = read_jsonl(tasks / "eval.jsonl", ("task", "prompt", "answer"), made_by="tasks")
    wrong = read_jsonl(tasks / "prefs_heldout.jsonl", PAIRS, made_by="tasks")
    held_pairs = read_jsonl(pairs / "heldout.jsonl", PAIRS, made_by="pairs")
    s = suite(p.evaluate, tokens, tokenizer, task_rows, wrong)
    results = [evaluate_model(m, d, s, proc.device, unigram=m == "base") for m, d in dirs.items() if m != artifacts.REWARD]
    reward = evaluate_reward(artifacts.REWARD, dirs[artifacts.REWARD], held_pairs, p.evaluate, proc.device)
    start = {m: (stage, before) for m, (stage, before) in models.items() if before and m != artifacts.REWARD}
    table = effects.table({r["model"]: r["items"] for r in results}, start,
                          (reward["rows"][0]["value"], reward["rows"][0]["n"]))
    for r in [*results, reward]:
        write_json(out / f"{r['model']}.json", r)
    write_json(effects_json, {"rows": table})
    by_model = {}  # the overall figures; per task they are in out/<model>.json and the report
    for r in (r for res in [*results, reward] for r in res["rows"] if r["task"] in ("val", "tasks", "cloze", "prefs")):
        by_model.setdefault(r["model"], {})[f"{r['task']}_{r['metric']}"] = round(r["value"], 5)
    for m, numbers in by_model.items():
        write_json(scores / f"{m}.json", numbers)
    for m in (r["model"] for r in results):
        x = by_model[m]
        print(f"evaluate: {m:<9} val bits/byte {x['val_bpb']:.4f}  held-out task accuracy {x['tasks_accuracy']:.3f}, "
              f"multiple choice {x.get('tasks_mc_accuracy', 0):.3f}, val cloze {x.get('cloze_mc_accuracy', 0):.3f}")
    nbytes = results[0]["rows"][0]["n"]
    scope = "the whole val split" if p.evaluate.tokens is None else f"the first {p.evaluate.tokens:,} val tokens"
    print(f"evaluate: val bits/byte over {nbytes:,} bytes, {scope}")
    print(f"evaluate: unigram val bits/byte {by_model['unigram']['val_bpb']:.4f}; "
          f"reward model held-out pairwise accuracy {by_model['reward']['prefs_pairwise_accuracy']:.3f}")
    for e in table:
        ci = "" if e["ci_low"] is None else f" [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
        print(f"evaluate: {e['stage']:<9} {e['metric']:<22} {e['before_model']} {e['before']:.4f} -> {e['after_model']} "
              f"{e['after']:.4f}: {e['diff']:+.4f}{ci} (n={e['n']}) {effects.verdict(e)}")
    return {"models": len(results), "val_bytes": nbytes, "questions": len(task_rows),
            "final_tasks_accuracy": by_model[p.export.model]["tasks_accuracy"]}
