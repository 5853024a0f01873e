"""What both report pages show, as plain tables: the report card, stage table, and run comparison."""

from __future__ import annotations

MODEL_ORDER = ["unigram", "base", "mid", "sft", "lora", "reward", "dpo", "rl", "quantized"]
STAGE_ORDER = ["download", "tokenize", "pretrain", "midtrain", "sft", "lora", "reward", "dpo", "rl",
               "evaluate", "quantize", "export", "report"]


def in_order(names, order: list[str]) -> list[str]:
    """Known names in pipeline order, then any others alphabetically."""
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def models_of(evals: list[dict]) -> list[str]:
    return in_order((e["model"] for e in evals), MODEL_ORDER)


def report_card(evals: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (task, metric), one column per model in pipeline order."""
    models = models_of(evals)
    cells = {(e["task"], e["metric"], e["model"]): e["value"] for e in evals}
    keys = list(dict.fromkeys((e["task"], e["metric"]) for e in evals))
    return ["task", "metric", *models], [[t, m, *(fmt(cells.get((t, m, x))) for x in models)] for t, m in keys]


def stage_table(stages: list[dict]) -> tuple[list[str], list[list[str]]]:
    by_name = {s["stage"]: s for s in stages}
    stages = [by_name[n] for n in in_order(by_name, STAGE_ORDER)]
    rows = [[s["stage"], fmt(s["elapsed_s"]), fmt(s["device"]),
             f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "–",
             f"{100 * s['mfu']:.1f}%" if s["mfu"] else "–"] for s in stages]
    return ["stage", "time (s)", "device", "tokens/s", "MFU"], rows


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= flatten(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def params_diff(old: dict, new: dict) -> list[list[str]]:
    a, b = flatten(old), flatten(new)
    return [[k, fmt(a.get(k)), fmt(b.get(k))] for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def eval_deltas(old: list[dict], new: list[dict]) -> list[list[str]]:
    before = {(e["model"], e["task"], e["metric"]): e["value"] for e in old}
    rows = []
    for e in new:
        k = (e["model"], e["task"], e["metric"])
        if k in before and before[k] is not None and e["value"] is not None:
            rows.append([*k, fmt(before[k]), fmt(e["value"]), f"{e['value'] - before[k]:+.4g}"])
    return rows
