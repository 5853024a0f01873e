"""evaluate: every model -> reports/eval/<model>.json.

Language models: val bits-per-byte, held-out task accuracy by exact match, samples. The reward model:
pairwise accuracy on held-out preference pairs.
"""
import time

from gptpipe.errors import user_errors

with user_errors("evaluate"):
    from gptpipe import dist
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.evaluate import evaluate_model, evaluate_reward
    from gptpipe.io import atomic_dir, read_jsonl, write_json, write_metrics
    from gptpipe.post.common import PAIRS

    # model -> (its directory, the stage that makes it)
    MODELS = {"base": ("models/base", "pretrain"), "mid": ("models/mid", "midtrain"), "sft": ("models/sft", "sft"),
              "lora": ("models/lora/merged", "lora"), "dpo": ("models/dpo", "dpo"), "rl": ("models/rl", "rl")}
    p = load_params()
    dirs = {m: require_file(d, made_by=stage) for m, (d, stage) in MODELS.items()}
    reward_dir = require_file("models/reward", made_by="reward")
    tokens = require_file("data/tokens", made_by="tokenize")
    tokenizer = require_file("data/tokenizer", made_by="tokenize")
    task_rows = read_jsonl(require_file("data/raw/tasks/eval.jsonl", made_by="tasks"), ("task", "prompt", "answer"))
    pairs = read_jsonl(require_file("data/raw/tasks/prefs_heldout.jsonl", made_by="tasks"), PAIRS)
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    results = [evaluate_model(m, d, tokens, tokenizer, p.evaluate, proc.device, task_rows, unigram=m == "base")
               for m, d in dirs.items()]
    results.append(evaluate_reward("reward", reward_dir, pairs, p.evaluate, proc.device))
    with atomic_dir("reports/eval") as out:
        for r in results:
            write_json(out / f"{r['model']}.json", r)
    metrics = {f"{r['model']}_{r['task']}_{r['metric']}": round(r["value"], 5) for res in results for r in res["rows"]}
    for m in MODELS:
        print(f"evaluate: {m:<5} val bits/byte {metrics[f'{m}_val_bpb']:.4f}  "
              f"held-out task accuracy {metrics[f'{m}_tasks_accuracy']:.3f}")
    print(f"evaluate: unigram val bits/byte {metrics['unigram_val_bpb']:.4f}; "
          f"reward model held-out pairwise accuracy {metrics['reward_prefs_pairwise_accuracy']:.3f}")
    write_metrics("evaluate", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2), "device": proc.label})
