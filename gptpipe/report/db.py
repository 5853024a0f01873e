"""The results database: one DuckDB file holding every run of the pipeline.

A run is one execution of the report stage, keyed by time, git rev and params hash. Its rows come from
the files the stages wrote: metrics/<stage>.json, plots/<stage>.csv, reports/eval/<model>.json and, when
those stages ran, metrics/quantize.json, reports/effects.json and reports/export.json.
Connections are short-lived (DuckDB lets one writer hold the file), and a run is written in one
transaction, so a crash never leaves half a run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import yaml

from gptpipe.artifacts import DB, EFFECTS, EVAL, EXPORT_REPORT, HARNESS, HTML, MARKDOWN, METRICS, PLOTS
from gptpipe.errors import UserError
from gptpipe.io import read_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, created_at TIMESTAMP, git_rev TEXT,
                                 params_hash TEXT, params_json TEXT, title TEXT);
CREATE TABLE IF NOT EXISTS stages (run_id TEXT, stage TEXT, elapsed_s DOUBLE, device TEXT,
                                   tokens_per_s DOUBLE, mfu DOUBLE, status TEXT, metrics_json TEXT);
CREATE TABLE IF NOT EXISTS metrics (run_id TEXT, stage TEXT, step BIGINT, name TEXT, value DOUBLE);
CREATE TABLE IF NOT EXISTS evals (run_id TEXT, model TEXT, task TEXT, metric TEXT, value DOUBLE,
                                  n BIGINT, stderr DOUBLE);
CREATE TABLE IF NOT EXISTS samples (run_id TEXT, model TEXT, prompt TEXT, completion TEXT);
CREATE TABLE IF NOT EXISTS quantization (run_id TEXT, model TEXT, scheme TEXT, device TEXT, bytes_before BIGINT,
                                         bytes_after BIGINT, tokens_per_s_before DOUBLE, tokens_per_s_after DOUBLE,
                                         bpb_before DOUBLE, bpb_after DOUBLE, accuracy_before DOUBLE,
                                         accuracy_after DOUBLE);
CREATE TABLE IF NOT EXISTS effects (run_id TEXT, stage TEXT, metric TEXT, before_model TEXT, after_model TEXT,
                                    before DOUBLE, after DOUBLE, diff DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
                                    n BIGINT, higher_is_better BOOLEAN, significant BOOLEAN, regression BOOLEAN);
CREATE TABLE IF NOT EXISTS exports (run_id TEXT, path TEXT, format TEXT, bytes BIGINT);
CREATE TABLE IF NOT EXISTS export_checks (run_id TEXT, artifact TEXT, "check" TEXT, passed BOOLEAN, detail TEXT);
"""


def connect(path: str | Path, read_only: bool = False, tries: int = 20):
    """Open the database, waiting up to ~5 s while another process holds it.

    DuckDB refuses every other open at once while one process writes; report runs are short, so waiting
    a little turns a concurrent report (or a reader) into a delay instead of a failure.
    """
    for i in range(tries):
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or i == tries - 1:
                raise UserError(f"{path}: cannot open ({e}); is another report running?") from None
            time.sleep(0.25)


def git_rev(workspace: Path) -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True)
    except OSError:  # no git installed: the run is still worth recording
        return "nogit"
    return r.stdout.strip() if r.returncode == 0 else "nogit"


def number(v) -> float | None:
    """A finite float, or None: stages may add text columns or keys the report must not choke on."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def shaped(path: Path, data, pick):
    """pick(data) pulls out the fields we store; a missing field or a wrong type names the file.

    Without this a hand-edited or half-written file would fail deep in DuckDB with no hint of its name.
    """
    try:
        return pick(data)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{path}: unexpected content ({type(e).__name__}: {e}); "
                        "rerun the stage that writes it") from None


def text(v, optional: bool = False) -> str | None:
    if not (isinstance(v, str) or (optional and v is None)):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def boolean(v) -> bool:
    if not isinstance(v, bool):  # "false" (a string) would otherwise be stored as passed
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def quantization(q: dict) -> list:
    return [text(q["model"]), text(q["scheme"]), text(q.get("device"), optional=True),
            *(number(q.get(k)) for k in ("bytes_before", "bytes_after", "tokens_per_s_before", "tokens_per_s_after"))]


def effects(x: dict) -> list[list]:
    """What each stage changed: its model against the one it started from, per metric."""
    rows = []
    for r in x["rows"]:
        n = number(r.get("n"))
        rows.append([*(text(r[k]) for k in ("stage", "metric", "before_model", "after_model")),
                     *(number(r[k]) for k in ("before", "after", "diff")),
                     number(r.get("ci_low")), number(r.get("ci_high")), None if n is None else int(n),
                     *(boolean(r[k]) for k in ("higher_is_better", "significant", "regression"))])
    return rows


def exports(x: dict) -> tuple[list, list]:
    files = [[text(f["path"]), text(f["format"]), number(f.get("bytes"))] for f in x["files"]]
    checks = [[text(c["artifact"]), text(c["check"]), boolean(c["passed"]), text(c.get("detail"), optional=True)]
              for c in x["checks"]]
    return files, checks


def collect(workspace: Path) -> dict:
    """Everything this run produced, read from the stage output files; missing ones are simply absent."""
    params = yaml.safe_load((workspace / "params.yaml").read_text()) or {}
    stages = {f.stem: read_json(f, made_by=f.stem) for f in sorted((workspace / METRICS).glob("*.json"))}
    qf, xf = workspace / METRICS / "quantize.json", workspace / EXPORT_REPORT
    quant = shaped(qf, stages["quantize"], quantization) if "quantize" in stages else None
    files, checks = shaped(xf, read_json(xf, made_by="export"), exports) if xf.exists() else ([], [])
    curves = []
    for f in sorted((workspace / PLOTS).glob("*.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                step = number(row.pop("step", None))
                if step is not None:
                    curves += [(f.stem, int(step), k, x) for k, v in row.items() if (x := number(v)) is not None]
    ef = workspace / EFFECTS  # the evaluate stage's stage-by-stage changes
    effect_rows = shaped(ef, read_json(ef, made_by="evaluate"), effects) if ef.exists() else []
    evals, samples = [], []  # the evaluate stage's rows, then any `gptpipe harness` rows
    for f in [*sorted((workspace / EVAL).glob("*.json")), *sorted((workspace / HARNESS).glob("*.json"))]:
        data = read_json(f, made_by="evaluate" if f.parent.name == "eval" else "`gptpipe harness`")
        evals += data.get("rows", [])
        samples += data.get("samples", [])
    return {"params": params, "stages": stages, "curves": curves, "evals": evals, "samples": samples,
            "quantization": quant, "effects": effect_rows, "exports": files, "export_checks": checks}


def record_run(db_path: str | Path, workspace: str | Path = ".", title: str = "gptpipe") -> str:
    """Insert this run (all of it or nothing) and return its id."""
    workspace = Path(workspace)
    c = collect(workspace)
    rev = git_rev(workspace)
    params_json = json.dumps(c["params"], sort_keys=True)
    phash = hashlib.sha256(params_json.encode()).hexdigest()[:12]
    now = datetime.now(timezone.utc)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{rev[:7]}-{phash[:6]}"
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    con = connect(db_path)
    try:
        con.execute(SCHEMA)
        con.execute("BEGIN")  # closing with this still open (any error below) rolls the whole run back
        taken = con.execute("SELECT count(*) FROM runs WHERE starts_with(run_id, ?)", [run_id]).fetchall()[0][0]
        if taken:  # another report of the same rev and params within the same second
            run_id = f"{run_id}.{taken + 1}"
        con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, now.replace(tzinfo=None), rev, phash, params_json, title])
        for stage, m in c["stages"].items():
            con.execute("INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, 'ok', ?)",
                        [run_id, stage, number(m.get("elapsed_s")), m.get("device"),
                         number(m.get("tokens_per_s")), number(m.get("mfu")), json.dumps(m, sort_keys=True)])
        if c["curves"]:
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", [[run_id, *r] for r in c["curves"]])
        if c["evals"]:
            con.executemany("INSERT INTO evals VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [[run_id, e["model"], e["task"], e["metric"], number(e.get("value")), e.get("n"),
                              number(e.get("stderr"))] for e in c["evals"]])
        if c["samples"]:
            con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)",
                            [[run_id, s["model"], s["prompt"], s["completion"]] for s in c["samples"]])
        if c["quantization"]:  # with its quality cost: val bpb and task accuracy of the source and the quantized copy
            score = {(e["model"], e["task"], e["metric"]): number(e.get("value")) for e in c["evals"]}
            cost = [score.get((m, task, metric)) for task, metric in (("val", "bpb"), ("tasks", "accuracy"))
                    for m in (c["quantization"][0], "quantized")]
            con.execute("INSERT INTO quantization VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, *c["quantization"], *cost])
        if c["effects"]:
            con.executemany("INSERT INTO effects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [[run_id, *r] for r in c["effects"]])
        if c["exports"]:
            con.executemany("INSERT INTO exports VALUES (?, ?, ?, ?)", [[run_id, *r] for r in c["exports"]])
        if c["export_checks"]:
            con.executemany("INSERT INTO export_checks VALUES (?, ?, ?, ?, ?)",
                            [[run_id, *r] for r in c["export_checks"]])
        con.execute("COMMIT")
    finally:
        con.close()
    return run_id


def _rows(con, sql: str, args=()) -> list[dict]:
    cur = con.execute(sql, list(args))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def load(db_path: str | Path) -> dict:
    """Plain data for the renderers: every run newest first; the latest run in full; the one before it.

    {"runs": [{run_id, created_at, git_rev, params_hash, params_json, title,
               scores: {"task/metric/model": value}}, ...],
     "latest"/"previous": None or a run plus params (dict), quantization (dict or None) and lists of dicts:
     stages, evals, samples, curves (stage, step, name, value), effects, exports, export_checks}
    """
    con = connect(db_path, read_only=True)
    try:
        runs = _rows(con, "SELECT * FROM runs ORDER BY created_at DESC, run_id DESC")

        def run(r):
            rid = r["run_id"]
            quant = _rows(con, "SELECT * FROM quantization WHERE run_id = ?", [rid])
            return {**r, "params": json.loads(r["params_json"]),
                    "stages": _rows(con, "SELECT * FROM stages WHERE run_id = ? ORDER BY rowid", [rid]),
                    "evals": _rows(con, "SELECT * FROM evals WHERE run_id = ? ORDER BY rowid", [rid]),
                    "samples": _rows(con, "SELECT * FROM samples WHERE run_id = ? ORDER BY rowid", [rid]),
                    "curves": _rows(con, "SELECT stage, step, name, value FROM metrics WHERE run_id = ? "
                                         "ORDER BY stage, name, step", [rid]),
                    "quantization": quant[0] if quant else None,
                    "effects": _rows(con, "SELECT * FROM effects WHERE run_id = ? ORDER BY rowid", [rid]),
                    "exports": _rows(con, "SELECT * FROM exports WHERE run_id = ? ORDER BY rowid", [rid]),
                    "export_checks": _rows(con, "SELECT * FROM export_checks WHERE run_id = ? ORDER BY rowid", [rid])}

        scores = {}  # every run's evals, for the history table and the page's run-to-run comparison
        for e in _rows(con, "SELECT run_id, task, metric, model, value FROM evals ORDER BY rowid"):
            scores.setdefault(e["run_id"], {})[f"{e['task']}/{e['metric']}/{e['model']}"] = e["value"]
        for r in runs:
            r["scores"] = scores.get(r["run_id"], {})
        latest = run(runs[0]) if runs else None
        previous = run(runs[1]) if len(runs) > 1 else None
    finally:
        con.close()
    return {"runs": runs, "latest": latest, "previous": previous}


def run(p, proc, *, html_page: Path, markdown_page: Path, db_path: Path = Path(DB)) -> dict:
    """The report stage: this run into the database, then both pages from every run in it."""
    from gptpipe.report import html, markdown

    run_id = record_run(db_path, title=p.report.title)
    data = load(db_path)
    html_page.write_text(html.render(data))
    markdown_page.write_text(markdown.render(data))
    print(f"report: run {run_id} ({len(data['runs'])} in {db_path}) -> {HTML}, {MARKDOWN}")
    return {"run_id": run_id}
