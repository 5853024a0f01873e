"""The report: a real DuckDB file across runs, the report card, escaping, and a self-contained page."""

import json
import re

import duckdb
import pytest

from gptpipe.report import db, html, markdown


def workspace(root, lr=0.003, bpb=1.5, completion="x = 1"):
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "plots").mkdir(exist_ok=True)
    (root / "reports" / "eval").mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(f"pretrain:\n  lr: {lr}\nreport:\n  title: t\n")
    (root / "metrics/pretrain.json").write_text(json.dumps(
        {"elapsed_s": 12.5, "device": "cpu:2threads", "tokens_per_s": 7000.0, "mfu": 0.4, "params": 10}))
    (root / "metrics/download.json").write_text(json.dumps({"elapsed_s": 1.0, "device": "cpu"}))
    (root / "plots/pretrain.csv").write_text(  # a text column and empty cells are skipped, not fatal
        "step,tokens,loss,lr,val_loss,phase\n1,100,5.0,0.001,,warmup\n2,200,4.0,0.002,4.2,stable\n")
    (root / "reports/eval/base.json").write_text(json.dumps({"model": "base", "rows": [
        {"model": "base", "task": "val", "metric": "bpb", "value": bpb, "n": 1000, "stderr": None},
        {"model": "unigram", "task": "val", "metric": "bpb", "value": 3.0, "n": 1000, "stderr": None}],
        "samples": [{"model": "base", "prompt": "def ", "completion": completion}]}))
    return root


def test_runs_accumulate_and_compare(tmp_path):
    ws = workspace(tmp_path)
    dbf = tmp_path / "reports/gptpipe.duckdb"
    first = db.record_run(dbf, ws, title="t")
    workspace(tmp_path, lr=0.002, bpb=1.25, completion="<script>alert(1)</script>")
    second = db.record_run(dbf, ws, title="t")
    assert first != second

    con = duckdb.connect(str(dbf), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchall() == [(2,)]
    assert con.execute("SELECT count(*) FROM evals").fetchall() == [(4,)]
    assert con.execute("SELECT value FROM metrics WHERE name = 'val_loss' AND run_id = ?", [second]).fetchall() == [(4.2,)]
    assert con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [second]).fetchall() == [(7,)]
    assert con.execute("SELECT tokens_per_s, mfu FROM stages WHERE stage = 'pretrain' LIMIT 1").fetchall() == [(7000.0, 0.4)]
    assert con.execute("SELECT count(*) FROM samples").fetchall() == [(2,)]
    con.close()

    data = db.load(dbf)
    assert [r["run_id"] for r in data["runs"]] == [second, first]
    page = html.render(data)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert re.search(r"pretrain\.lr</td><td>0\.003</td><td>0\.002", page)
    assert "-0.25" in page  # base bpb delta
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must not fetch anything"
    assert "://" not in page
    assert "<polyline" in page and "<circle" in page

    md = markdown.render(data)
    assert "| task | metric | unigram | base |" in md and "| val | bpb | 3 | 1.25 |" in md
    assert "| pretrain | 12.5 | cpu:2threads | 7,000 | 40.0% |" in md
    assert md.index("| download") < md.index("| pretrain")


def test_same_run_twice_gets_distinct_ids(tmp_path):
    dbf = tmp_path / "r.duckdb"
    ids = [db.record_run(dbf, workspace(tmp_path / "ws")) for _ in range(3)]
    assert len(set(ids)) == 3 and all(i.split("-")[1] == "nogit" for i in ids)
    assert len(db.load(dbf)["runs"]) == 3


def test_renders_with_missing_pieces(tmp_path):
    (tmp_path / "params.yaml").write_text("report:\n  title: '<b>x</b> | y'\n")
    dbf = tmp_path / "r.duckdb"
    db.record_run(dbf, tmp_path, title="<b>x</b> | y")
    data = db.load(dbf)
    page = html.render(data)
    assert "No training curves" in page and "first run" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "No evaluations" in markdown.render(data)


def test_loss_chart_edge_cases():
    one = html.loss_chart([{"stage": "sft", "step": 5, "name": "loss", "value": 2.0}])
    assert "<circle" in one and "<polyline" not in one and ">step</text>" in one  # no tokens column: x is steps
    assert "No training curves" in html.loss_chart([{"stage": "sft", "step": 5, "name": "lr", "value": 0.1}])


def test_locked_database_is_reported_clearly(tmp_path):
    dbf = tmp_path / "r.duckdb"
    holder = duckdb.connect(str(dbf))  # this process holds it; another process must be refused cleanly
    import subprocess
    import sys
    code = ("from gptpipe.report import db; from gptpipe.errors import UserError\n"
            f"try: db.connect({str(dbf)!r}, tries=2)\nexcept UserError as e: print('USER', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    holder.close()
    assert out.startswith("USER") and "another report running" in out
