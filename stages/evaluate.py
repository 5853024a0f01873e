"""evaluate: every model -> reports/eval/<model>.json.

Language models (the quantized one too; lora as its adapter applied to sft): val bits-per-byte,
held-out task accuracy by exact match of generated answers and by multiple choice, val cloze, samples. The reward model: pairwise accuracy on
held-out on-policy preference pairs. reports/effects.json: what each stage did to its target metric,
paired on the same questions and val windows (gptpipe/effects.py).
"""
import time

from gptpipe.errors import user_errors

with user_errors("evaluate"):
    from gptpipe import dist, effects
    from gptpipe.artifacts import ADAPTER, MODELS, REWARD
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.evaluate import evaluate_model, evaluate_reward, suite
    from gptpipe.io import atomic_dir, read_jsonl, write_json, write_metrics
    from gptpipe.post.common import PAIRS

    p = load_params()
    dirs = {m: require_file(d, made_by=stage) for m, (d, stage) in (MODELS | {"lora": ADAPTER}).items()}
    reward_dir = require_file(*REWARD)
    tokens = require_file("data/tokens", made_by="tokenize")
    tokenizer = require_file("data/tokenizer", made_by="tokenize")
    task_rows = read_jsonl(require_file("data/raw/tasks/eval.jsonl", made_by="tasks"), ("task", "prompt", "answer"), made_by="tasks")
    wrong = read_jsonl(require_file("data/raw/tasks/prefs_heldout.jsonl", made_by="tasks"), PAIRS, made_by="tasks")
    pairs = read_jsonl(require_file("data/pairs/heldout.jsonl", made_by="pairs"), PAIRS, made_by="pairs")
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    s = suite(p.evaluate, tokens, tokenizer, task_rows, wrong)
    results = [evaluate_model(m, d, s, proc.device, unigram=m == "base", base=dirs["sft"] if m == "lora" else None)
               for m, d in dirs.items()]
    results.append(evaluate_reward("reward", reward_dir, pairs, p.evaluate, proc.device))
    start = {"mid": "base", "sft": "mid", "lora": "sft", "dpo": "sft", "rl": p.rl.start, "quantized": p.export.model}
    reward_row = results[-1]["rows"][0]
    table = effects.table({r["model"]: r["items"] for r in results[:-1]}, start, (reward_row["value"], reward_row["n"]))
    with atomic_dir("reports/eval") as out:
        for r in results:
            write_json(out / f"{r['model']}.json", r)
    write_json("reports/effects.json", {"rows": table})
    metrics = {f"{r['model']}_{r['task']}_{r['metric']}": round(r["value"], 5) for res in results for r in res["rows"]}
    for m in MODELS:
        print(f"evaluate: {m:<9} val bits/byte {metrics[f'{m}_val_bpb']:.4f}  held-out task accuracy "
              f"{metrics[f'{m}_tasks_accuracy']:.3f}, multiple choice {metrics.get(f'{m}_tasks_mc_accuracy', 0):.3f}, "
              f"val cloze {metrics.get(f'{m}_cloze_mc_accuracy', 0):.3f}")
    scope = "the whole val split" if p.evaluate.tokens is None else f"the first {p.evaluate.tokens:,} val tokens"
    print(f"evaluate: val bits/byte over {results[0]['rows'][0]['n']:,} bytes, {scope}")
    print(f"evaluate: unigram val bits/byte {metrics['unigram_val_bpb']:.4f}; "
          f"reward model held-out pairwise accuracy {metrics['reward_prefs_pairwise_accuracy']:.3f}")
    for e in table:
        ci = "" if e["ci_low"] is None else f" [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
        print(f"evaluate: {e['stage']:<9} {e['metric']:<22} {e['before_model']} {e['before']:.4f} -> {e['after_model']} "
              f"{e['after']:.4f}: {e['diff']:+.4f}{ci} (n={e['n']}) {effects.verdict(e)}")
    write_metrics("evaluate", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2), "device": proc.label})
