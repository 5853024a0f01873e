"""reports/report.md: the nanochat-style report card of the latest run."""

from __future__ import annotations

import re
from html import escape

from gptpipe.report.card import (Bad, effect_table, export_checks, export_files, quantization_table, report_card,
                                 scored, stage_table)


MARKUP = re.compile(r"([\\`*_\[\]!])")  # what would turn text into emphasis, code, links or remote images


def cell(s) -> str:
    """One table cell (or heading) on one line, shown as the text it is: a `|` or newline from data would
    break the table, Markdown renderers pass HTML through (`<`, `&`), and `![x](url)` would load an image."""
    return " ".join(MARKUP.sub(r"\\\1", escape(str(s), quote=False)).replace("|", "\\|").split())


def marked(c) -> str:
    """A cell, in bold when it shows a regression (Markdown has no color)."""
    return f"**{cell(c)}**" if isinstance(c, Bad) else cell(c)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(marked(c) for c in r) + " |" for r in rows])


def section(title: str, tables: list, missing: str) -> list[str]:
    """A heading and its tables; `missing` when the stage behind it did not run."""
    body = [table(*t) for t in tables if t[1]]
    return [f"## {title}", "", "\n\n".join(body) or missing, ""]


def render(data: dict) -> str:
    run = data["latest"]
    if run is None:
        return "# gptpipe report\n\nNo runs yet.\n"
    q = run["quantization"]
    parts = [f"# {cell(run['title'])}", "",
             f"run `{run['run_id']}` · git `{run['git_rev'][:10]}` · params `{run['params_hash']}` · "
             f"{run['created_at']:%Y-%m-%d %H:%M} UTC", "", "## Report card", "",
             table(*report_card(run["evals"])) if run["evals"] else "No evaluations.", "",
             scored(run["evals"], run["params"]), "",
             *section("What each stage did", [effect_table(run["effects"])], "No stage effects in this run."),
             "## Stages", "", table(*stage_table(run["stages"])), "",
             *section("Quantization", [quantization_table(q, run["evals"])] if q else [],
                      "No quantization in this run."),
             *section("Export", [export_files(run["exports"]), export_checks(run["export_checks"])],
                      "No export in this run.")]
    return "\n".join(parts)
