"""reports/report.md: the nanochat-style report card of the latest run."""

from __future__ import annotations

from gptpipe.report.card import report_card, stage_table


def cell(s) -> str:
    """One table cell (or heading) on one line: a `|` or newline from data would break the table."""
    return " ".join(str(s).replace("|", "\\|").split())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows])


def render(data: dict) -> str:
    run = data["latest"]
    if run is None:
        return "# gptpipe report\n\nNo runs yet.\n"
    parts = [f"# {cell(run['title'])}", "",
             f"run `{run['run_id']}` · git `{run['git_rev'][:10]}` · params `{run['params_hash']}` · "
             f"{run['created_at']:%Y-%m-%d %H:%M} UTC", "", "## Report card", "",
             table(*report_card(run["evals"])) if run["evals"] else "No evaluations.", "",
             "## Stages", "", table(*stage_table(run["stages"])), ""]
    return "\n".join(parts)
