"""report: add this run to reports/gptpipe.duckdb; render reports/index.html and reports/report.md."""

from gptpipe.errors import user_errors

with user_errors("report"):
    from gptpipe.config import load_params
    from gptpipe.io import atomic_write
    from gptpipe.report import db, html, markdown

    DB = "reports/gptpipe.duckdb"
    p = load_params()
    run_id = db.record_run(DB, title=p.report.title)
    data = db.load(DB)
    atomic_write("reports/index.html", html.render(data))
    atomic_write("reports/report.md", markdown.render(data))
    print(f"report: run {run_id} ({len(data['runs'])} in {DB}) -> reports/index.html, reports/report.md")
