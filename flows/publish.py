"""Prefect artifacts of a speedrun: the eval rows as a table, the report card as markdown.

Read from the files the evaluate and report stages wrote (reports/eval/*.json, reports/report.md), so the
artifacts show what the workspace holds after this run, whether DVC reran those stages or found them up to date.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from gptpipe.artifacts import EVAL, HTML, MARKDOWN

EVAL_KEY, REPORT_KEY = "gptpipe-eval", "gptpipe-report"  # one key each: the UI keeps every run's version


def eval_table(ws: Path) -> int:
    """A table artifact with one row per model x task x metric; returns the number of rows."""
    rows = []
    for f in sorted((ws / EVAL).glob("*.json")):
        rows += [{k: r.get(k) for k in ("model", "task", "metric", "value", "n", "stderr")}
                 for r in json.loads(f.read_text()).get("rows", [])]
    create_table_artifact(rows, key=EVAL_KEY, description=f"Eval results in {ws / EVAL}")
    return len(rows)


def report_card(ws: Path) -> Path:
    """A markdown artifact: the report card (reports/report.md) and where the HTML report is."""
    html = ws / HTML
    card = (ws / MARKDOWN).read_text()
    create_markdown_artifact(f"{card}\n\n**HTML report:** `{html}` (one self-contained file: open it in a browser)\n",
                             key=REPORT_KEY, description=f"Report card of {ws}")
    return html
