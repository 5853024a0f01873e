"""Standard benchmarks through EleutherAI's lm-evaluation-harness, on any exported HF model directory.

Our own evaluate stage measures what the pipeline trains for; this runs the tasks everyone else reports
(hellaswag, arc, ...) or task YAMLs of your own from `include_path`, and turns the harness's results
into our eval rows, so they sit in the same tables as the rest. The same run from the shell:

    lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --tasks NAME --include_path TASKS --device cpu

lm_eval is an optional extra (`pip install -e '.[harness]'`), imported only here and only when called.
"""

from __future__ import annotations

import math
from pathlib import Path

from gptpipe.errors import UserError
from gptpipe.evaluate import row


def run(model_dir, tasks: list[str], include_path: str | None = None, limit: int | None = None,
        batch_size: int | str = 1, device: str = "cpu") -> list[dict]:
    """Evaluate the model in `model_dir` on `tasks`; one row per (task or group, metric).

    Inputs are checked before the model is loaded, so a typo costs seconds, not a model load.
    """
    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"{model_dir}: not an HF model directory (no config.json); pass an exported model, "
                        f"e.g. models/sft")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"include_path {include_path} is not a directory; pass the folder holding your task YAMLs")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("lm_eval is not installed; run `pip install -e '.[harness]'`") from None

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"in lm_eval or {include_path}" if include_path else "in lm_eval (no include_path given)"
        raise UserError(f"unknown task {', '.join(unknown)}: not {where}; check the `task:` name in your YAML "
                        f"or list them with `lm_eval ls tasks --include_path DIR`")

    out = lm_eval.simple_evaluate(
        model="hf",
        # float32 on CPU, where half-precision matmuls are slow; elsewhere the dtype the model was saved in.
        model_args={"pretrained": str(model_dir), "dtype": "float32" if device == "cpu" else "auto",
                    "trust_remote_code": False},
        tasks=tasks, task_manager=manager, limit=limit, batch_size=batch_size, device=device,
        log_samples=False,
    )
    return to_rows(out, Path(model_dir).name)


def to_rows(out: dict, model: str) -> list[dict]:
    """The harness's {task: {"acc,none": v, "acc_stderr,none": s, ...}} as our rows.

    Keys are "metric,filter"; only the "none" filter's name is dropped, so filtered variants (e.g.
    "exact_match,strict-match") stay apart. Groups count the items of all their tasks.
    """
    def n_items(name: str) -> int:
        if name in out["n-samples"]:
            return out["n-samples"][name]["effective"]
        return sum(n_items(t) for t in out["group_subtasks"].get(name, []))

    rows = []
    for task, metrics in out["results"].items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if not filt or "_stderr" in name or not isinstance(value, (int, float)):
                continue  # "alias", "name" and the like, and stderrs, which ride along with their metric
            stderr = metrics.get(f"{name}_stderr,{filt}")
            metric = name if filt == "none" else f"{name},{filt}"
            rows.append(row(model, task, metric, float(value), n_items(task),
                            float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None))
    return rows
