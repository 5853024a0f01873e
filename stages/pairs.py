"""pairs: models/sft -> data/pairs/{train,heldout}.jsonl, on-policy preference pairs labeled by the task checker.

train: from the RL prompts (the training questions), for reward and dpo. heldout: from the held-out
questions, only to score the reward model's pairwise accuracy. With `pairs.source: tasks`, the tasks
stage's prefs_train/prefs_heldout (a preference dataset with tasks.source: hf) are used as they are.
"""
import time

from gptpipe.errors import user_errors

with user_errors("pairs"):
    from gptpipe import dist, pairs
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, write_metrics

    p = load_params()
    tasks_dir = require_file("data/raw/tasks", made_by="tasks")
    for f in ("rl", "eval") if p.pairs.source == "policy" else ("prefs_train", "prefs_heldout"):
        require_file(tasks_dir / f"{f}.jsonl", made_by="tasks")
    policy = require_file("models/sft", made_by="sft") if p.pairs.source == "policy" else None
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    with atomic_dir("data/pairs") as out:
        metrics = pairs.write(p.pairs, tasks_dir, policy, out, proc.device)
    write_metrics("pairs", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2), "device": proc.label})
