"""pairs: models/sft -> data/pairs/{train,heldout}.jsonl, on-policy preference pairs labeled by the task checker.

train: from the RL prompts (the training questions), for reward and dpo. heldout: from the held-out
questions, only to score the reward model's pairwise accuracy. With `pairs.source: tasks`, the tasks
stage's prefs_train/prefs_heldout (a preference dataset with tasks.source: hf) are used as they are.
"""
import collections
import json
import shutil
import time

from gptpipe.errors import user_errors

with user_errors("pairs"):
    import torch

    from gptpipe import dist, pairs
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, read_jsonl, write_metrics
    from gptpipe.model import load_pretrained

    p = load_params()
    t0 = time.perf_counter()
    metrics = {"source": p.pairs.source}
    if p.pairs.source == "tasks":
        with atomic_dir("data/pairs") as out:
            for name in ("train", "heldout"):
                shutil.copy(require_file(f"data/raw/tasks/prefs_{name}.jsonl", made_by="tasks"), out / f"{name}.jsonl")
        device = "cpu"
    else:
        policy = require_file("models/sft", made_by="sft")
        sets = {name: read_jsonl(require_file(f"data/raw/tasks/{src}.jsonl", made_by="tasks"),
                                 ("task", "prompt", "answer"))[:p.pairs.max_prompts]
                for name, src in (("train", "rl"), ("heldout", "eval"))}
        proc = dist.setup(p.device)
        tok, model = load_pretrained(policy, dtype=torch.float32)
        with atomic_dir("data/pairs") as out:
            for name, rows in sets.items():
                made, seen = pairs.make(p.pairs, model, tok, rows, proc.device)
                (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made))
                per_task = collections.Counter(r["task"] for r in made)
                print(f"pairs: {name}: {len(made)} pairs from {len(rows)} prompts x {p.pairs.samples} samples "
                      f"(sampled accuracy {seen['sample_accuracy']:.3f}; all right {seen['all_right']}, mixed "
                      f"{seen['mixed']}, none right {seen['none_right']}); per task {dict(per_task)}", flush=True)
                metrics |= {f"{name}_pairs": len(made), **{f"{name}_{k}": v for k, v in seen.items()}}
        device = proc.label
    write_metrics("pairs", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2), "device": device})
