"""What each stage did: its target metric before -> after, scored on the same items, with a 95% interval.

Two models answered the same held-out questions (and scored the same val windows), so the difference is
paired: the interval comes from the per-item differences, which is far tighter than two independent
standard errors when the models agree on most items.
"""

from __future__ import annotations

import math

Z95 = 1.959964


def paired(before: list[float], after: list[float], weights: list[float] | None = None) -> tuple[float, float]:
    """(mean of after - before, its standard error); with `weights`, the weighted mean (e.g. bits/byte over
    windows of different byte counts) and the standard error of that ratio estimate."""
    n = len(before)
    if n != len(after) or n < 2:
        raise ValueError(f"paired: need two equal lists of 2+ items, got {n} and {len(after)}")
    w = weights or [1.0] * n
    total = sum(w)
    d = [a - b for a, b in zip(after, before)]
    mean = sum(wi * di for wi, di in zip(w, d)) / total
    var = n / (n - 1) * sum((wi * (di - mean)) ** 2 for wi, di in zip(w, d)) / total ** 2
    return mean, math.sqrt(var)


def row(stage: str, metric: str, before_model: str, after_model: str, before: float, after: float,
        diff: float, se: float | None, n: int | None, higher_is_better: bool, tolerance: float = 0.0) -> dict:
    """One stage effect. Significant: the 95% interval excludes 0. Regression: worse by more than
    `tolerance` (a guard metric may move a little) and beyond the noise."""
    lo, hi = (None, None) if se is None else (diff - Z95 * se, diff + Z95 * se)
    significant = lo is not None and (lo > 0 or hi < 0)
    worse = -diff if higher_is_better else diff
    worse_bound = (-hi if higher_is_better else lo) if lo is not None else worse  # the least-bad end of the interval
    regression = worse > tolerance and worse_bound > 0
    return {"stage": stage, "metric": metric, "before_model": before_model, "after_model": after_model,
            "before": before, "after": after, "diff": diff, "ci_low": lo, "ci_high": hi, "n": n,
            "higher_is_better": higher_is_better, "significant": significant, "regression": regression}


def verdict(e: dict) -> str:
    return "REGRESSION" if e["regression"] else "significant" if e["significant"] else "not significant"


def accuracy(stage: str, metric: str, a: str, b: str, hits: dict[str, list[bool]], tolerance: float = 0.0) -> dict:
    """Paired accuracy change from model a to b on the same questions."""
    x, y = [float(h) for h in hits[a]], [float(h) for h in hits[b]]
    diff, se = paired(x, y)
    return row(stage, metric, a, b, sum(x) / len(x), sum(y) / len(y), diff, se, len(x), True, tolerance)


def bpb(stage: str, a: str, b: str, windows: dict[str, list[tuple[float, int]]], ratio: float | None = None) -> dict:
    """Paired bits/byte change over the same val windows ((nats, bytes) each). With `ratio`, a guard: a
    regression only when b's bits/byte is above `ratio` x a's."""
    wa, wb = windows[a], windows[b]
    nbytes = [n for _, n in wa]
    per = [[nats / max(n, 1) / math.log(2) for nats, n in w] for w in (wa, wb)]
    before, after = (sum(x for x, _ in w) / sum(nbytes) / math.log(2) for w in (wa, wb))
    diff, se = paired(per[0], per[1], weights=nbytes)
    tolerance = (ratio - 1) * before if ratio else 0.0
    return row(stage, "val/bpb", a, b, before, after, diff, se, len(nbytes), False, tolerance)


# Guards: what a stage may cost on the metrics it does not target before it counts as a regression.
BPB_RATIO = 1.3          # val bits/byte may rise to 1.3x the stage's starting model's
CLOZE_DROP = 0.05        # val cloze accuracy may fall by 0.05
QUANTIZED_BPB_RATIO = 1.05


def table(items: dict[str, dict], start: dict[str, tuple[str, str]], reward: tuple[float, int] | None = None) -> list[dict]:
    """Every stage's effect (the reward model's last). `items` maps a model to its per-item results (evaluate's
    "items": val windows, tasks hits, cloze hits); `start` maps each post-training model to the stage that
    makes it and the model it started from (e.g. {"mid": ("midtrain", "base"), ..., "rl": ("rl", "dpo")}); `reward` is
    the reward model's held-out pairwise accuracy and n, compared with chance (0.5)."""
    val = {m: x["val"] for m, x in items.items()}
    tasks = {m: x["tasks"] for m, x in items.items() if x.get("tasks")}
    cloze = {m: x["cloze"] for m, x in items.items() if x.get("cloze")}
    rows = []
    if "base" in items and "unigram_val" in items["base"]:
        rows.append(bpb("pretrain", "unigram", "base", {**val, "unigram": items["base"]["unigram_val"]}))
    for model, (stage, before) in start.items():
        if model not in items or before not in items:
            continue
        if model in tasks and before in tasks:
            rows.append(accuracy(stage, "tasks/accuracy", before, model, tasks))
        ratio = QUANTIZED_BPB_RATIO if model == "quantized" else BPB_RATIO
        rows.append(bpb(stage, before, model, val, ratio=ratio))
        if model in cloze and before in cloze and model != "mid":
            rows.append(accuracy(stage, "cloze/mc_accuracy", before, model, cloze, tolerance=CLOZE_DROP))
    if reward:  # not paired: chance has no answers of its own
        acc, n = reward
        rows.append(row("reward", "prefs/pairwise_accuracy", "chance", "reward", 0.5, acc, acc - 0.5,
                        math.sqrt(acc * (1 - acc) / n), n, True))
    return rows
