"""What both report pages show, as plain tables: the report card, what each stage did, stages, quantization,
export, and the run comparison (static, with the previous run, and the history the page's script compares
any two of). A cell that shows a regression is a `Bad` string, so each page can mark it its own way."""

from __future__ import annotations

import json
import math
from pathlib import Path

from gptpipe import artifacts
from gptpipe.effects import verdict


def pipeline() -> Path:
    """Where the stage order comes from: this workspace's dvc.yaml, or this checkout's for a page rendered elsewhere."""
    return Path(".") if Path("dvc.yaml").exists() else Path(__file__).resolve().parents[2]


def stage_order() -> list[str]:
    return artifacts.stages(pipeline())


def model_order() -> list[str]:
    return ["unigram", *artifacts.models(pipeline())]


class Bad(str):
    """A table cell showing a regression: red on the page, bold in Markdown."""


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
    return in_order((e["model"] for e in evals), model_order())


def regressions(evals: list[dict]) -> set[tuple[str, str, str]]:
    """The (task, metric, model) scores that are regressions: val bits/byte worse than the unigram model's."""
    bpb = {e["model"]: e["value"] for e in evals if (e["task"], e["metric"]) == ("val", "bpb")}
    floor = bpb.get("unigram")
    return {("val", "bpb", m) for m, v in bpb.items() if None not in (v, floor) and v > floor}


def scored(evals: list[dict], params: dict) -> str:
    """What the card's val bits/byte was scored on, in words."""
    n = next((e["n"] for e in evals if (e["task"], e["metric"]) == ("val", "bpb") and e["n"]), None)
    if n is None:
        return ""
    e = params.get("evaluate") or {}
    scope = ("of the val split" if "tokens" not in e else "(the whole val split)" if e["tokens"] is None else
             f"(the first {e['tokens']:,} tokens of the val split)")
    return f"Val bits/byte: {n:,} bytes {scope}. Unigram: add-one smoothed token frequencies of the train split."


def report_card(evals: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (task, metric), one column per model in pipeline order."""
    models = models_of(evals)
    cells = {(e["task"], e["metric"], e["model"]): e["value"] for e in evals}
    keys = list(dict.fromkeys((e["task"], e["metric"]) for e in evals))
    bad = regressions(evals)

    def cell(key):
        return (Bad if key in bad else str)(fmt(cells.get(key)))
    return ["task", "metric", *models], [[t, m, *(cell((t, m, x)) for x in models)] for t, m in keys]


def interval(diff, low, high) -> str:
    """A change with its 95% interval when there is one: "+0.372 [+0.330, +0.414]", with more decimals where three
    would round a significant interval to a point: "-0.00003 [-0.00004, -0.00002]", not "-0.000 [-0.000, -0.000]"."""
    if diff is None:
        return "–"
    if low is None or high is None:
        return f"{diff:+.3f}"
    half = (high - low) / 2
    d = 3 if half >= 5e-4 or half <= 0 else min(6, -math.floor(math.log10(half)))
    return f"{diff:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]"


def effect_table(effects: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Each stage's model against the one it started from, per metric, in pipeline order; regressions are Bad."""
    order = {s: i for i, s in enumerate(in_order((e["stage"] for e in effects), stage_order()))}
    rows = []
    for e in sorted(effects, key=lambda e: order[e["stage"]]):
        row = [e["stage"], e["metric"], f"{e['before_model']}: {fmt(e['before'])}",
               f"{e['after_model']}: {fmt(e['after'])}", interval(e["diff"], e["ci_low"], e["ci_high"]), verdict(e)]
        rows.append([Bad(c) for c in row] if e["regression"] else row)
    return ["stage", "metric", "before", "after", "change [95% interval]", "verdict"], rows


def stage_table(stages: list[dict]) -> tuple[list[str], list[list[str]]]:
    by_name = {s["stage"]: s for s in stages}
    stages = [by_name[n] for n in in_order(by_name, stage_order())]
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


def mb(n) -> float | None:
    return None if n is None else n / 1e6


def ratio(after, before) -> str:
    return f"×{after / before:.2f}" if after is not None and before else "–"


def change(after, before) -> str:
    return f"{after - before:+.4g}" if after is not None and before is not None else "–"


def quantization_table(q: dict, evals: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The source model next to its quantized copy: what quantizing saved (size, speed) and what it cost.

    The cost is read from the evals (the quantized copy is evaluated as model "quantized"), so both
    columns were measured by the same code on the same questions.
    """
    score = {(e["task"], e["metric"], e["model"]): e["value"] for e in evals}
    rows = [["size (MB)", mb(q["bytes_before"]), mb(q["bytes_after"]), ratio(q["bytes_after"], q["bytes_before"])],
            ["tokens/s", q["tokens_per_s_before"], q["tokens_per_s_after"],
             ratio(q["tokens_per_s_after"], q["tokens_per_s_before"])]]
    for task, metric in [("val", "bpb"), ("tasks", "accuracy")]:
        before, after = score.get((task, metric, q["model"])), score.get((task, metric, "quantized"))
        rows.append([f"{task} {metric}", before, after, change(after, before)])
    header = ["", q["model"], f"quantized ({q['scheme']}, {q['device'] or '?'})", "change"]
    return header, [[name, fmt(a), fmt(b), c] for name, a, b, c in rows]


def export_files(files: list[dict]) -> tuple[list[str], list[list[str]]]:
    rows = [[f["path"], f["format"], fmt(mb(f["bytes"]))] for f in files]
    return ["file", "format", "size (MB)"], rows


def export_checks(checks: list[dict]) -> tuple[list[str], list[list[str]]]:
    rows = [[c["artifact"], c["check"], "pass" if c["passed"] else "FAIL", fmt(c["detail"])] for c in checks]
    return ["artifact", "check", "result", "detail"], rows


def history_table(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Every run with its headline scores, so a changed param shows in the numbers it moved."""
    rows = []
    for r in runs:
        chat = (json.loads(r["params_json"]).get("export") or {}).get("model", "rl")  # the final chat model
        score = [r["scores"].get(k) for k in ("val/bpb/base", f"val/bpb/{chat}", f"tasks/accuracy/{chat}",
                                              "tasks/accuracy/sft", "prefs/pairwise_accuracy/reward")]
        rows.append([r["run_id"], f"{r['created_at']:%Y-%m-%d %H:%M}", r["git_rev"][:10], r["params_hash"], chat,
                     *map(fmt, score)])
    return ["run", "date (UTC)", "git", "params", "chat model", "base val bpb", "chat val bpb",
            "chat tasks accuracy", "sft tasks accuracy", "reward pairwise accuracy"], rows


def history(runs: list[dict]) -> list[dict]:
    """Every run as the page's comparison script reads it: flat params and evals keyed task/metric/model."""
    return [{"id": r["run_id"], "title": r["title"], "time": f"{r['created_at']:%Y-%m-%d %H:%M}",
             "params": flatten(json.loads(r["params_json"])), "evals": r["scores"]} for r in runs]
