"""The report: a real DuckDB file across runs, the report card, escaping, and a self-contained page."""

import json
import re

import duckdb
import pytest

from gptpipe.errors import UserError
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
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert re.search(r"pretrain\.lr</td><td>0\.003</td><td>0\.002", page)
    assert "-0.25" in page  # base bpb delta
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must not fetch anything"
    assert "://" not in page
    assert "<polyline" in page and "<circle" in page

    md = markdown.render(data)
    assert "| task | metric | unigram | base |" in md and "| val | bpb | 3 | 1.25 |" in md
    assert "Val bits/byte: 1,000 bytes of the val split." in md and "Val bits/byte: 1,000 bytes" in page
    (ws / "params.yaml").write_text("evaluate:\n  tokens: null\nreport:\n  title: t\n")
    db.record_run(dbf, ws, title="t")
    assert "Val bits/byte: 1,000 bytes (the whole val split)." in markdown.render(db.load(dbf))
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
    assert "No quantization in this run" in page and "No export in this run" in page
    md = markdown.render(data)
    assert "No evaluations" in md and "No quantization in this run" in md and "# &lt;b&gt;x&lt;/b&gt; \\| y" in md


QUANTIZE = {"model": "rl", "scheme": "int8", "device": "cpu", "bytes_before": 7152168, "bytes_after": 4983041,
            "tokens_per_s_before": 301.5, "tokens_per_s_after": 350.3, "elapsed_s": 12.0}
EXPORT = {"model": "rl", "files": [
    {"path": "export/hf/model.safetensors", "format": "hf safetensors", "bytes": 7152168},
    {"path": "export/gguf/model-q8_0.gguf", "format": "gguf q8_0", "bytes": 2100000}], "checks": [
    {"artifact": "export/hf", "check": "stock transformers loads it and chats", "passed": True, "detail": "reply: <42>"},
    {"artifact": "export/gguf/model-f32.gguf", "check": "llama.cpp greedy continuation equals transformers",
     "passed": False, "detail": None}]}


def quantized_workspace(root):
    ws = workspace(root)
    (ws / "metrics/quantize.json").write_text(json.dumps(QUANTIZE))
    (ws / "reports/export.json").write_text(json.dumps(EXPORT))
    (ws / "reports/eval/rl.json").write_text(json.dumps({"rows": [
        {"model": m, "task": t, "metric": k, "value": v, "n": 100}
        for m, t, k, v in [("rl", "val", "bpb", 1.5), ("rl", "tasks", "accuracy", 0.5),
                           ("quantized", "val", "bpb", 1.52), ("quantized", "tasks", "accuracy", 0.48)]]}))
    return ws


def test_quantization_and_export(tmp_path):
    ws, dbf = quantized_workspace(tmp_path), tmp_path / "r.duckdb"
    db.record_run(dbf, ws)
    con = duckdb.connect(str(dbf), read_only=True)
    assert con.execute("SELECT model, scheme, bytes_after, tokens_per_s_after, bpb_before, bpb_after, accuracy_before,"
                       " accuracy_after FROM quantization").fetchall() == [("rl", "int8", 4983041, 350.3, 1.5, 1.52, 0.5, 0.48)]
    assert con.execute("SELECT count(*) FROM exports").fetchall() == [(2,)]
    assert con.execute('SELECT "check", passed FROM export_checks ORDER BY rowid').fetchall() == [
        ("stock transformers loads it and chats", True), ("llama.cpp greedy continuation equals transformers", False)]
    con.close()

    data = db.load(dbf)
    page, md = html.render(data), markdown.render(data)
    assert "<td>size (MB)</td><td>7.152</td><td>4.983</td><td>×0.70</td>" in page
    assert "<td>tokens/s</td><td>301.5</td><td>350.3</td><td>×1.16</td>" in page
    assert "<td>val bpb</td><td>1.5</td><td>1.52</td><td>+0.02</td>" in page
    assert "<td>tasks accuracy</td><td>0.5</td><td>0.48</td><td>-0.02</td>" in page
    assert "quantized (int8, cpu)" in page and "reply: &lt;42&gt;" in page and ">FAIL<" in page
    assert r"| export/gguf/model-q8\_0.gguf | gguf q8\_0 | 2.1 |" in md  # Markdown syntax escaped
    assert "| val bpb | 1.5 | 1.52 | +0.02 |" in md
    assert "reply: &lt;42&gt; |" in md


EFFECTS = {"rows": [  # as the evaluate stage writes them, dpo first: the table puts them in pipeline order
    {"stage": "dpo", "metric": "tasks/accuracy", "before_model": "sft", "after_model": "dpo", "before": 0.474,
     "after": 0.484, "diff": 0.01, "ci_low": None, "ci_high": None, "n": None,
     "higher_is_better": True, "significant": False, "regression": False},
    {"stage": "sft", "metric": "tasks/accuracy", "before_model": "mid", "after_model": "sft", "before": 0.102,
     "after": 0.474, "diff": 0.372, "ci_low": 0.33, "ci_high": 0.41, "n": 1000,
     "higher_is_better": True, "significant": True, "regression": False},
    {"stage": "sft", "metric": "val/bpb", "before_model": "mid", "after_model": "sft", "before": 1.149,
     "after": 3.548, "diff": 2.399, "ci_low": 2.2, "ci_high": 2.6, "n": 256,
     "higher_is_better": False, "significant": True, "regression": True}]}


def effects_workspace(root):
    ws = quantized_workspace(root)
    (ws / "reports/effects.json").write_text(json.dumps(EFFECTS))
    (ws / "reports/eval/sft.json").write_text(json.dumps({"rows": [  # worse than unigram (3.0): a regression
        {"model": "sft", "task": "val", "metric": "bpb", "value": 3.548, "n": 256},
        {"model": "sft", "task": "tasks", "metric": "accuracy", "value": 0.474, "n": 1000}]}))
    return ws


def test_what_each_stage_did(tmp_path):
    ws, dbf = effects_workspace(tmp_path), tmp_path / "r.duckdb"
    run = db.record_run(dbf, ws)
    con = duckdb.connect(str(dbf), read_only=True)
    assert con.execute("SELECT stage, metric, diff, ci_low, n, significant, regression FROM effects "
                       "WHERE run_id = ? ORDER BY rowid", [run]).fetchall() == [
        ("dpo", "tasks/accuracy", 0.01, None, None, False, False),
        ("sft", "tasks/accuracy", 0.372, 0.33, 1000, True, False), ("sft", "val/bpb", 2.399, 2.2, 256, True, True)]
    assert con.execute("SELECT count(*) FROM evals WHERE model = 'sft'").fetchall() == [(2,)]  # effects.json: no evals
    con.close()

    data = db.load(dbf)
    assert len(data["latest"]["effects"]) == 3
    page, md = html.render(data), markdown.render(data)
    assert page.index("Report card") < page.index("What each stage did") < page.index("<h2>Stages")
    assert ("<tr><td>sft</td><td>tasks/accuracy</td><td>mid: 0.102</td><td>sft: 0.474</td>"
            "<td>+0.372 [+0.330, +0.410]</td><td>significant</td></tr>") in page
    assert ('<tr><td class=bad>sft</td><td class=bad>val/bpb</td><td class=bad>mid: 1.149</td>'
            '<td class=bad>sft: 3.548</td><td class=bad>+2.399 [+2.200, +2.600]</td><td class=bad>REGRESSION</td>'
            '</tr><tr><td>dpo</td><td>tasks/accuracy</td><td>sft: 0.474</td><td>dpo: 0.484</td><td>+0.010</td>'
            '<td>not significant</td></tr>') in page  # pipeline order: sft before dpo
    assert ("<tr><td>val</td><td>bpb</td><td>3</td><td>1.5</td><td class=bad>3.548</td><td>1.5</td><td>1.52</td>"
            "</tr>") in page  # of the card's bpb cells, only sft's is above unigram's
    assert ".bad{color:#b00" in page
    # the history shows each run's headline scores: base and the chat model (export.model, default rl)
    assert "<td>rl</td><td>1.5</td><td>1.5</td><td>0.5</td><td>0.474</td><td>–</td></tr>" in page

    assert md.index("## Report card") < md.index("## What each stage did") < md.index("## Stages")
    assert r"| sft | tasks/accuracy | mid: 0.102 | sft: 0.474 | +0.372 \[+0.330, +0.410\] | significant |" in md
    assert (r"| **sft** | **val/bpb** | **mid: 1.149** | **sft: 3.548** | **+2.399 \[+2.200, +2.600\]** "
            "| **REGRESSION** |") in md
    assert "| val | bpb | 3 | 1.5 | **3.548** | 1.5 | 1.52 |" in md


def test_an_interval_shows_the_decimals_it_needs():
    from gptpipe.report.card import interval

    assert interval(0.372, 0.330, 0.414) == "+0.372 [+0.330, +0.414]"
    assert interval(-3e-5, -4e-5, -2e-5) == "-0.00003 [-0.00004, -0.00002]"  # significant, though tiny
    assert interval(0.002, 0.0016, 0.0024) == "+0.0020 [+0.0016, +0.0024]"
    assert interval(0.0, 0.0, 0.0) == "+0.000 [+0.000, +0.000]"  # every question scored the same
    assert interval(0.01, None, None) == "+0.010" and interval(None, None, None) == "–"


@pytest.mark.parametrize("name, content", [
    ("metrics/quantize.json", "{not json"),
    ("metrics/quantize.json", json.dumps({**QUANTIZE, "model": None})),
    ("reports/export.json", json.dumps({"files": [], "checks": [{"artifact": "a", "check": "c", "passed": "no"}]})),
    ("reports/export.json", json.dumps([1, 2])),
    ("reports/effects.json", json.dumps({"rows": [{**EFFECTS["rows"][0], "regression": "no"}]})),
    ("reports/effects.json", json.dumps({"rows": [{**EFFECTS["rows"][0], "stage": None}]})),
], ids=["not json", "model not text", "passed not a bool", "not an object", "regression not a bool",
        "stage not text"])
def test_malformed_stage_files_name_the_file_and_record_nothing(tmp_path, name, content):
    ws, dbf = quantized_workspace(tmp_path), tmp_path / "r.duckdb"
    db.record_run(dbf, ws)
    (ws / name).write_text(content)
    with pytest.raises(UserError, match=name):
        db.record_run(dbf, ws)
    assert len(db.load(dbf)["runs"]) == 1


def test_database_from_before_quantization_still_works(tmp_path):
    ws, dbf = workspace(tmp_path), tmp_path / "r.duckdb"
    old = db.record_run(dbf, ws)
    con = duckdb.connect(str(dbf))  # what an older version created: no quantization, effects or export tables
    con.execute("DROP TABLE quantization; DROP TABLE effects; DROP TABLE exports; DROP TABLE export_checks")
    con.close()
    new = db.record_run(dbf, effects_workspace(tmp_path))
    data = db.load(dbf)
    assert [r["run_id"] for r in data["runs"]] == [new, old]
    assert data["latest"]["quantization"]["scheme"] == "int8" and data["previous"]["quantization"] is None
    assert len(data["latest"]["effects"]) == 3 and data["previous"]["effects"] == []
    assert "No stage effects in this run" in html.render({**data, "latest": data["previous"]})


def test_history_is_embedded_inert(tmp_path):
    """Data holding `</script>` or `<!--` must stay inside the JSON block and come back unchanged."""
    evil = "</script><script>alert(1)</script><!--"
    (tmp_path / "params.yaml").write_text(json.dumps({"report": {"title": evil}}))
    dbf = tmp_path / "r.duckdb"
    for _ in range(2):
        db.record_run(dbf, tmp_path, title=evil)
    page = html.render(db.load(dbf))
    assert page.count("</script>") == 2 and "<!--" not in page  # the JSON block's end and the script's end
    block = re.search(r'<script type="application/json" id="history">(.*?)</script>', page, re.S).group(1)
    runs = json.loads(block)
    assert [r["title"] for r in runs] == [evil, evil] and runs[0]["params"] == {"report.title": evil}
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    assert html.sha256(script) in csp and "unsafe-inline" not in csp


def test_loss_chart_edge_cases():
    one = html.loss_chart([{"stage": "sft", "step": 5, "name": "loss", "value": 2.0}])
    assert "<circle" in one and "<polyline" not in one and ">step</text>" in one  # no tokens column: x is steps
    assert "No training curves" in html.loss_chart([{"stage": "sft", "step": 5, "name": "lr", "value": 0.1}])


def test_loss_chart_has_one_panel_per_training_stage():
    curves = [{"stage": st, "step": s, "name": n, "value": v} for st, s, n, v in [
        ("sft", 1, "loss", 2.0), ("sft", 2, "loss", 1.0),  # no tokens: its own x is steps
        ("pretrain", 1, "tokens", 100), ("pretrain", 2, "tokens", 200), ("pretrain", 1, "loss", 9.0),
        ("pretrain", 2, "loss", 5.0), ("pretrain", 2, "val_loss", 6.0), ("rl", 1, "reward", 0.5)]]
    chart = html.loss_chart(curves)
    panels = re.findall(r"<figure><figcaption>(\w+)</figcaption>(.*?)</figure>", chart)
    assert [name for name, _ in panels] == ["pretrain", "sft"]  # pipeline order; rl logged no loss
    (_, pretrain), (_, sft) = panels
    assert ">tokens</text>" in pretrain and ">200</text>" in pretrain and ">9</text>" in pretrain
    assert ">step</text>" in sft and ">2</text>" in sft and ">9</text>" not in sft  # its own axes
    assert pretrain.count("<polyline") == 1 and pretrain.count("<circle") == 1 and "<circle" not in sft


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
