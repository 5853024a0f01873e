"""evaluate: every model -> reports/eval/<model>.json (val bits-per-byte, held-out task accuracy, samples)."""
import time

from gptpipe.errors import user_errors

with user_errors("evaluate"):
    from gptpipe import dist
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.evaluate import evaluate_model
    from gptpipe.io import atomic_dir, write_json, write_metrics
    from gptpipe.midtrain import read_jsonl

    MODELS = {"base": "pretrain", "mid": "midtrain", "sft": "sft"}  # model -> the stage that makes it
    p = load_params()
    dirs = {m: require_file(f"models/{m}", made_by=stage) for m, stage in MODELS.items()}
    tokens = require_file("data/tokens", made_by="tokenize")
    tokenizer = require_file("data/tokenizer", made_by="tokenize")
    task_rows = read_jsonl(require_file("data/raw/tasks/eval.jsonl", made_by="tasks"))
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    results = [evaluate_model(m, d, tokens, tokenizer, p.evaluate, proc.device, task_rows, unigram=m == "base")
               for m, d in dirs.items()]
    with atomic_dir("reports/eval") as out:
        for r in results:
            write_json(out / f"{r['model']}.json", r)
    metrics = {f"{r['model']}_{r['task']}_{r['metric']}": round(r["value"], 5) for res in results for r in res["rows"]}
    for m in MODELS:
        print(f"evaluate: {m:<5} val bits/byte {metrics[f'{m}_val_bpb']:.4f}  "
              f"held-out task accuracy {metrics[f'{m}_tasks_accuracy']:.3f}")
    print(f"evaluate: unigram val bits/byte {metrics['unigram_val_bpb']:.4f}")
    write_metrics("evaluate", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2), "device": proc.label})
