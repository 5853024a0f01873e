"""Multiple-choice evaluation by log-likelihood (nanochat's categorical / CORE-style eval).

Each question is a context and a few candidate continuations, one right; the model's pick is the
candidate with the highest summed log-probability given the context. Nothing is generated, so it
measures what a model knows even before it can follow the chat format (a base model scores here).

Two offline sets:
- `choice`: the held-out chat tasks; the right reply against the task's plausible wrong answer and
  other answers of the same task, each ending with the end-of-turn token (so "1" cannot win by being
  a prefix of "17").
- `cloze`: validation text; the real next tokens against continuations taken from elsewhere in it.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

Item = dict  # {"task": str, "context": list[int], "options": list[list[int]], "label": int}


def chat_items(tok, rows: list[dict], wrong: dict[str, str], n: int, choices: int, seed: int) -> list[Item]:
    """Up to n questions from held-out task rows; `wrong` maps a question to its plausible wrong answer."""
    r = random.Random(seed)
    answers: dict[str, list[str]] = {}
    for row in rows:
        answers.setdefault(row["task"], []).append(row["answer"])
    items = []
    for row in rows[:n]:
        q = row["prompt"][-1]["content"]
        pool = [a for a in dict.fromkeys([wrong.get(q, ""), *r.sample(answers[row["task"]], len(answers[row["task"]]))])
                if a and a != row["answer"]]
        if len(pool) < choices - 1:
            continue  # too few distinct answers in this task to make a fair question
        options = [row["answer"], *pool[:choices - 1]]
        r.shuffle(options)
        context = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        items.append({"task": row["task"], "context": tok(context, add_special_tokens=False).input_ids,
                      "options": [tok(o + tok.eos_token, add_special_tokens=False).input_ids for o in options],
                      "label": options.index(row["answer"])})
    return items


def cloze_items(arrays: list[np.ndarray], n: int, choices: int, context: int, continuation: int,
                seed: int) -> list[Item]:
    """n questions from token arrays: `context` tokens, then the real `continuation` or another one."""
    rng = np.random.default_rng(seed)
    text = np.concatenate(arrays)
    span = context + continuation
    if len(text) < span * (choices + 1):
        return []
    starts = rng.integers(0, len(text) - span, size=(n, choices))
    items = []
    for s in starts:
        options = [text[s[0] + context:s[0] + span].tolist(), *(text[o + context:o + span].tolist() for o in s[1:])]
        order = rng.permutation(choices)
        items.append({"task": "cloze", "context": text[s[0]:s[0] + context].tolist(),
                      "options": [options[i] for i in order], "label": int(np.argmin(order))})
    return items


def logliks(model, pairs: list[tuple[list[int], list[int]]], device, batch: int, pad: int) -> list[float]:
    """Summed log p(continuation | context) of each (context, continuation), batched and right-padded.
    Logits are made only from the shortest context's end on (`logits_to_keep`; a cloze row needs 16 of its 64
    positions): the default suite's 1,600 options took 1.4-1.6 s a model here instead of 1.7-2.7 s, same sums."""
    out = []
    model.eval().to(device)
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        seqs = [c + k for c, k in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        first = min(len(c) for c, _ in chunk) - 1  # the first position that predicts a continuation token
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=width - first).logits
        logp = F.log_softmax(logits.float(), -1)
        for j, (c, k) in enumerate(chunk):
            positions = torch.arange(len(c) - 1 - first, len(c) + len(k) - 1 - first, device=logp.device)
            out.append(logp[j, positions, torch.tensor(k, device=logp.device)].sum().item())
    return out


def hits(model, items: list[Item], device, batch: int, pad: int) -> dict[str, list[bool]]:
    """Per task, whether the model's most likely option was the right one, question by question."""
    pairs = [(it["context"], o) for it in items for o in it["options"]]
    scores = iter(logliks(model, pairs, device, batch, pad))
    out: dict[str, list[bool]] = {}
    for it in items:
        s = [next(scores) for _ in it["options"]]
        out.setdefault(it["task"], []).append(int(np.argmax(s)) == it["label"])
    return out
