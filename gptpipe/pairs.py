"""On-policy preference pairs: the SFT model's own replies, labeled by the task checker.

For each prompt the policy answers greedily (what evaluate scores) and samples `samples` more replies. Each
distinct reply the checker rejects (what the model really writes when it is wrong) makes a pair; its chosen
side is one of the model's own right replies, in turn, or the reference answer when it wrote none. Prompts
it always gets right give no pair. DPO and the reward model then learn from the mistakes this model makes,
its greedy answer's first of all, not from wrong answers it would never write.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import torch

from gptpipe.artifacts import require
from gptpipe.config import Pairs, Params
from gptpipe.dist import Proc
from gptpipe.sample import replies
from gptpipe.tasks import assistant, check


def label(rows: list[dict], sampled: list[list[str]]) -> tuple[list[dict], dict]:
    """Pairs {task, prompt, chosen, rejected} from each row's sampled replies, and counts of what was seen."""
    pairs, seen = [], {"prompts": len(rows), "all_right": 0, "mixed": 0, "none_right": 0, "samples_right": 0}
    for r, texts in zip(rows, sampled):
        right = [t for t in texts if check(t, r["answer"])]
        wrong = [t for t in texts if not check(t, r["answer"])]
        seen["samples_right"] += len(right)
        seen["all_right" if not wrong else "mixed" if right else "none_right"] += 1
        chosen = right or [r["answer"]]
        for i, rejected in enumerate(dict.fromkeys(wrong)):
            pairs.append({"task": r["task"], "prompt": r["prompt"], "chosen": [assistant(chosen[i % len(chosen)])],
                          "rejected": [assistant(rejected)]})
    return pairs, seen


def make(s: Pairs, model, tok, rows: list[dict], device) -> tuple[list[dict], dict]:
    """Answer greedily, sample (seeded) and label: the same model, rows and params give the same pairs."""
    prompts = [r["prompt"] for r in rows]
    texts = replies(model, tok, prompts, device, s.batch_size, s.max_new_tokens, k=s.samples,
                    temperature=s.temperature, greedy=True, seed=s.seed)
    pairs, seen = label(rows, texts)
    greedy_right = sum(check(t[0], r["answer"]) for t, r in zip(texts, rows))
    seen["greedy_accuracy"] = round(greedy_right / max(1, len(rows)), 4)
    seen["sample_accuracy"] = round((seen.pop("samples_right") - greedy_right) / max(1, len(rows) * s.samples), 4)
    return pairs, seen


SPLITS = (("train", "rl"), ("heldout", "eval"))  # pairs file <- the tasks set whose prompts it samples


def run(p: Params, proc: Proc, *, tasks: Path, policy: Path, out: Path) -> dict:
    """The pairs stage: out/{train,heldout}.jsonl, sampled from `policy` (pairs.source policy) on the RL and the
    held-out questions, or the tasks stage's prefs_{train,heldout}.jsonl as they are (source tasks)."""
    from gptpipe.io import read_jsonl
    from gptpipe.model import load_pretrained

    s = p.pairs
    sources = {name: tasks / (f"prefs_{name}.jsonl" if s.source == "tasks" else f"{src}.jsonl") for name, src in SPLITS}
    for f in sources.values():
        require(f)
    if s.source == "tasks":
        for name, f in sources.items():
            shutil.copy(f, out / f"{name}.jsonl")
        return {"source": "tasks"}
    tok, model = load_pretrained(policy, dtype=torch.float32)
    metrics = {"source": "policy"}
    for name, f in sources.items():
        rows = read_jsonl(f, ("task", "prompt", "answer"), made_by="tasks")[:s.max_prompts]
        made, seen = make(s, model, tok, rows, proc.device)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made))
        print(f"pairs: {name}: {len(made)} pairs from {len(rows)} prompts x (greedy + {s.samples} samples) "
              f"(greedy accuracy {seen['greedy_accuracy']:.3f}, sampled {seen['sample_accuracy']:.3f}; "
              f"all right {seen['all_right']}, mixed {seen['mixed']}, none right "
              f"{seen['none_right']}); per task {dict(collections.Counter(r['task'] for r in made))}", flush=True)
        metrics |= {f"{name}_pairs": len(made), **{f"{name}_{k}": v for k, v in seen.items()}}
    return metrics
