"""report: add this run to reports/gptpipe.duckdb; render reports/index.html and reports/report.md."""
from gptpipe.errors import user_errors

with user_errors("report"):
    from gptpipe import stage
    from gptpipe.artifacts import HTML, MARKDOWN
    from gptpipe.report import db

    stage.run("report", db.run, html_page=HTML, markdown_page=MARKDOWN)
