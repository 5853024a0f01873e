"""tasks: the chat sets as data/raw/tasks/*.jsonl: synthetic (gptpipe/tasks.py) or, with `tasks.source: hf`,
from Hugging Face datasets (gptpipe/chat_data.py).

A stage of its own, not part of download: changing a chat-task param must not re-download the corpus.
"""
import collections
import json
import time

from gptpipe.errors import user_errors

with user_errors("tasks"):
    from gptpipe import chat_data, tasks
    from gptpipe.config import load_params
    from gptpipe.io import atomic_dir, write_metrics

    p = load_params()
    t = p.tasks
    t0 = time.perf_counter()
    if t.source == "hf":  # loaded and checked in full before anything is written
        sets = chat_data.build(t.hf, t.seed)
    else:
        sets = tasks.build(t.names, t.train_per_task, t.heldout_per_task, t.heldout_fraction, t.multi_turn,
                           t.seed, n_rl=t.rl_per_task)
    with atomic_dir("data/raw/tasks") as out:
        for name, rows in sets.items():
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_task = collections.Counter(r["task"] for r in sets["eval"])
    print(f"tasks ({t.source}): " + ", ".join(f"{len(v)} {k}" for k, v in sets.items())
          + f"; held-out per task {dict(per_task)}")
    write_metrics("tasks", {**{f"{k}_rows": len(v) for k, v in sets.items()},
                            "elapsed_s": round(time.perf_counter() - t0, 2), "device": "cpu"})
