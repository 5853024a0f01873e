"""The report: a DuckDB history of runs (db), the report card (card), and its Markdown and HTML pages."""
