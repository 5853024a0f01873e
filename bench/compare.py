"""Paired greedy accuracy of models on the same task questions, for tuning a post-training stage without
looking at the held-out set.

    python bench/compare.py models/sft models/dpo [--rows data/raw/tasks/rl.jsonl --skip 10000]

The default rows are the last 5,000 RL prompts: training-side questions SFT never saw. Keep pairs and RL off
them while tuning (`pairs.max_prompts: 10000`; RL samples from every row of rl.jsonl, so train it on a copy
cut to the first 10,000), and the choices made here are not fitted to the held-out card. Use thousands:
at 1,000 rows (SE ~0.008 between close models) dropping next_number's DPO pairs ranked first, at 5,000 last.
Prints each model's accuracy per task and each model's paired difference from the first, with a 95% interval.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from gptpipe.effects import Z95, paired
from gptpipe.evaluate import task_accuracy
from gptpipe.io import read_jsonl
from gptpipe.model import load_pretrained


def hits(model_dir: Path, rows: list[dict]) -> list[bool]:
    tok, model = load_pretrained(model_dir, dtype=torch.float32)
    return task_accuracy(model, tok, rows, torch.device("cpu"), str(model_dir), batch=256)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--rows", type=Path, default=Path("data/raw/tasks/rl.jsonl"))
    ap.add_argument("--skip", type=int, default=10000, help="leading rows left out (those pairs and RL train on)")
    ap.add_argument("--tasks", nargs="*", help="only these tasks")
    a = ap.parse_args()
    rows = [r for r in read_jsonl(a.rows, ("task", "prompt", "answer"), made_by="tasks")[a.skip:] if not a.tasks or r["task"] in a.tasks]
    scored = {m: hits(m, rows) for m in a.models}
    names = sorted({r["task"] for r in rows})
    print(f"{'model':<28}" + "".join(f"{t:>12}" for t in names) + f"{'all':>8}  paired diff vs {a.models[0]} [95%]")
    base = [float(h) for h in scored[a.models[0]]]
    for m, h in scored.items():
        per = collections.defaultdict(list)
        for r, x in zip(rows, h):
            per[r["task"]].append(x)
        diff, se = paired(base, [float(x) for x in h])
        print(f"{str(m):<28}" + "".join(f"{sum(per[t]) / len(per[t]):>12.3f}" for t in names) +
              f"{sum(h) / len(h):>8.3f}  {diff:+.4f} [{diff - Z95 * se:+.4f}, {diff + Z95 * se:+.4f}] (n={len(h)})")


if __name__ == "__main__":
    main()
