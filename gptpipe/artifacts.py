"""The path contract, read from dvc.yaml: the order the stages run in, which stage writes which path, the
models and the model each one starts from. Nothing else keeps a list of stages or models: a stage added to
dvc.yaml is run in order, required by its consumers under its own name, evaluated and reported.

A model is a `models/<name>` output; the one it starts from is the `models/` dependency of the stage that
writes it (`${rl.start}` and the like resolved from params.yaml, as DVC does).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from gptpipe.errors import UserError

CODE = ("stages/", "gptpipe/", "flows/")  # deps that are code, not data
REWARD = "reward"  # the one model that scores replies instead of writing them
# The paths read by code that is not their stage's (the report, the flow), named once; dvc.yaml says who makes each.
METRICS, PLOTS = "metrics", "plots"              # <stage>.json, <stage>.csv
EVAL, EFFECTS = "reports/eval", "reports/effects.json"
EXPORT_REPORT = "reports/export.json"
HARNESS = "reports/harness"                      # `gptpipe harness` rows, added to the next report
DB, HTML, MARKDOWN = "reports/gptpipe.duckdb", "reports/index.html", "reports/report.md"


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


@functools.cache
def _params(root: str) -> dict:
    from gptpipe.config import read_yaml

    return read_yaml(Path(root, "params.yaml"))


def resolve(path: str, root: str | Path = ".") -> str:
    """`models/${rl.start}` -> `models/dpo`, from params.yaml, as DVC fills dvc.yaml."""
    def value(m):
        v = _params(str(Path(root).resolve()))
        for k in m.group(1).split("."):
            v = v[k]
        return str(v)
    return re.sub(r"\$\{([\w.]+)\}", value, str(path))


@functools.cache
def _graph(root: str) -> dict[str, dict[str, list[str]]]:
    try:
        stages = yaml.safe_load(Path(root, "dvc.yaml").read_text())["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"{Path(root, 'dvc.yaml')}: cannot read its stages ({e}); restore it from git") from None
    return {name: {"deps": [resolve(d, root) for d in _paths(s.get("deps")) if not d.startswith(CODE)],
                   "outs": [resolve(o, root) for o in _paths(s.get("outs"))],
                   "metrics": _paths(s.get("metrics")) + _paths(s.get("plots")),
                   "params": [str(x) for x in s.get("params") or []]}
            for name, s in stages.items()}


def graph(root: str | Path = ".") -> dict[str, dict[str, list[str]]]:
    """stage -> its data deps, outs, metrics/plots and params sections, in dvc.yaml's (run) order."""
    return _graph(str(Path(root).resolve()))


def stages(root: str | Path = ".") -> list[str]:
    return list(graph(root))


def maker(path: str | Path, root: str | Path = ".") -> str | None:
    """The stage whose output is `path` or holds it (data/raw/tasks/sft.jsonl -> tasks)."""
    p = Path(path).as_posix()
    for stage, s in graph(root).items():
        if any(p == o or p.startswith(o.rstrip("/") + "/") for o in s["outs"] + s["metrics"]):
            return stage
    return None


def require(path: str | Path, root: str | Path = ".") -> Path:
    """`path`, which must exist; if it does not, the error names the stage that makes it."""
    if not Path(path).exists():
        by = maker(path, root) if Path(root, "dvc.yaml").exists() else None
        fix = f"it is made by the {by} stage; run `dvc repro {by}`" if by else "no stage in dvc.yaml makes it"
        raise UserError(f"{path} not found: {fix}")
    return Path(path)


def models(root: str | Path = ".") -> dict[str, tuple[str, str | None]]:
    """name -> (the stage that makes it, the model it starts from or None) for every `models/<name>` output,
    in run order."""
    out = {}
    for stage, s in graph(root).items():
        start = next((Path(d).name for d in s["deps"] if d.startswith("models/")), None)
        out |= {Path(o).name: (stage, start) for o in s["outs"] if o.startswith("models/") and o.count("/") == 1}
    return out


def chat_models(root: str | Path = ".") -> list[str]:
    """The models that descend from sft, which made them chat models; quantized is export.model's own copy."""
    found = ["sft"]
    for name, (_, start) in models(root).items():
        if start in found and name not in (REWARD, "quantized"):
            found.append(name)
    return found


def params_of(path: str | Path, root: str | Path = ".") -> list[str]:
    """The params sections read by the stage that makes `path` and by every stage upstream of it, in run order:
    the recipe of a model."""
    g = graph(root)
    todo, upstream = [maker(path, root)], set()
    while todo:
        stage = todo.pop()
        if stage and stage not in upstream:
            upstream.add(stage)
            todo += [maker(d, root) for d in g[stage]["deps"]]
    return list(dict.fromkeys(p.split(".")[0] for stage, s in g.items() if stage in upstream for p in s["params"]))
