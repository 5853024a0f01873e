"""reports/index.html: one self-contained page (inline CSS, SVG and one small script; nothing fetched).

Every string that came from data (titles, params, prompts, completions) goes through `esc`, except the
run history, which goes in as JSON (`json_block`) for the comparison script; that script builds its
tables with textContent only. A Content-Security-Policy allows exactly our own style and script (by
hash), so even markup that slipped through escaping could not run or load anything. Without scripts the
page still shows everything, with the comparison against the previous run rendered here.
"""

from __future__ import annotations

import base64
import hashlib
import json
from html import escape

from gptpipe.report.card import (Bad, effect_table, eval_deltas, export_checks, export_files, history,
                                 history_table, in_order, params_diff, quantization_table, report_card, scored,
                                 stage_order, stage_table)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child,td.l{text-align:left}
pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;word-break:break-all;margin:.3em 0 1em}
.muted{color:#777}svg{background:#fff;border:1px solid #eee}.bad{color:#b00;font-weight:600}
.panels{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-weight:600}
"""
# Compares any two runs of the embedded history; replaces the static comparison with the previous run.
COMPARE_JS = """
const runs = JSON.parse(document.getElementById("history").textContent);
const el = (tag, text) => { const e = document.createElement(tag); e.textContent = text ?? ""; return e; };
const fmt = v => v == null ? "–" : typeof v === "number" ? String(+v.toPrecision(4))
  : typeof v === "string" ? v : JSON.stringify(v);
const signed = x => (x > 0 ? "+" : "") + fmt(x);
function table(header, rows) {
  const t = el("table");
  [header, ...rows].forEach((cells, i) => {
    const tr = t.insertRow();
    cells.forEach(c => tr.append(el(i ? "td" : "th", c)));
  });
  return t;
}
function pick(selected) {
  const s = el("select");
  runs.forEach((r, i) => s.add(new Option(`${r.time} · ${r.title} (${r.id})`, i, i === selected, i === selected)));
  s.addEventListener("change", show);
  return s;
}
const [a, b, out] = [pick(1), pick(0), el("div")];
function show() {
  const [A, B] = [runs[a.value], runs[b.value]];
  const keys = [...new Set([...Object.keys(A.params), ...Object.keys(B.params)])].sort();
  const diff = keys.filter(k => JSON.stringify(A.params[k]) !== JSON.stringify(B.params[k]))
    .map(k => [k, fmt(A.params[k]), fmt(B.params[k])]);
  const deltas = Object.keys(B.evals).filter(k => A.evals[k] != null && B.evals[k] != null)
    .map(k => [k, fmt(A.evals[k]), fmt(B.evals[k]), signed(B.evals[k] - A.evals[k])]);
  out.replaceChildren(
    el("h3", "Params that changed"), diff.length ? table(["param", "before", "now"], diff) : el("p", "None."),
    el("h3", "Evaluation deltas"), deltas.length ? table(["task/metric/model", "before", "now", "change"], deltas)
      : el("p", "No common evaluations."));
}
if (runs.length > 1) {
  document.getElementById("compare").replaceChildren("before ", a, " now ", b, out);
  show();
}
"""
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def esc(x) -> str:
    return escape(str(x), quote=True)


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = ('<meta http-equiv="Content-Security-Policy" '
       f'content="default-src \'none\'; style-src {sha256(CSS)}; script-src {sha256(COMPARE_JS)}">')


def json_block(id: str, data) -> str:
    """Data for the script, inert: a `<` from data could otherwise close the element (`</script>`)."""
    inert = json.dumps(data).replace("<", "\\u003c")  # the same string to JSON.parse
    return f'<script type="application/json" id="{id}">{inert}</script>'


def td(c) -> str:
    return f"<td class=bad>{esc(c)}</td>" if isinstance(c, Bad) else f"<td>{esc(c)}</td>"


def table(header, rows) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def loss_chart(curves: list[dict]) -> str:
    """Training loss (line) and validation loss (dots): one small panel per training stage, in pipeline order."""
    series = {}
    for c in curves:
        series.setdefault(c["stage"], {}).setdefault(c["name"], []).append((c["step"], c["value"]))
    panels = [loss_panel(st, series[st]) for st in in_order(series, stage_order())
              if "loss" in series[st] or "val_loss" in series[st]]
    if not panels:
        return '<p class="muted">No training curves in this run.</p>'
    return '<div class=panels>' + "".join(panels) + "</div>"


def loss_panel(stage: str, cols: dict, width: int = 340, height: int = 220) -> str:
    """One stage's losses on its own axes, against tokens when it logged them, else steps.

    Drawn here as inline SVG so the page needs no plotting library.
    """
    xname = "tokens" if "tokens" in cols else "step"
    x_of = dict(cols.get(xname, []))  # step -> x
    lines = [(name, pts) for name in ("loss", "val_loss")
             if (pts := [(x_of.get(s, s), v) for s, v in cols.get(name, [])])]
    xs = [x for _, p in lines for x, _ in p]
    ys = [y for _, p in lines for _, y in p]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad = 48

    def px(x, y):
        return (pad + (x - x0) / (x1 - x0) * (width - 2 * pad),
                height - pad + (y0 - y) / (y1 - y0) * (height - 2 * pad))

    out = [f'<figure><figcaption>{esc(stage)}</figcaption>'
           f'<svg width="{width}" height="{height}" role="img">']  # HTML5 needs no xmlns for inline SVG
    for i in range(5):  # grid and tick labels
        y = y0 + (y1 - y0) * i / 4
        _, py = px(x0, y)
        out.append(f'<line x1="{pad}" x2="{width - pad}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>'
                   f'<text x="{pad - 6}" y="{py + 4:.1f}" font-size="11" text-anchor="end">{y:.4g}</text>')
        x = x0 + (x1 - x0) * i / 4
        qx, _ = px(x, y0)
        out.append(f'<text x="{qx:.1f}" y="{height - pad + 16}" font-size="11" text-anchor="middle">{x:,.0f}</text>')
    out.append(f'<text x="{width / 2}" y="{height - 8}" font-size="12" text-anchor="middle">{xname}</text>')
    for i, (name, pts) in enumerate(lines):
        color = COLORS[i]
        if name == "loss" and len(pts) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in pts))
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        else:
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="{color}" stroke="#000"/>'
                    for a, b in (px(x, y) for x, y in pts)]  # val points, or a lone training point
        out.append(f'<text x="{width - pad - 4}" y="{pad - 20 + 14 * i}" font-size="11" text-anchor="end" '
                   f'fill="{color}">{name}</text>')
    return "".join(out) + "</svg></figure>"


def section(title: str, tables: list, missing: str) -> list[str]:
    """A heading and its tables; `missing` when the stage behind it did not run."""
    body = [table(*t) for t in tables if t[1]]
    return [f"<h2>{esc(title)}</h2>", *(body or [f"<p class=muted>{esc(missing)}</p>"])]


def render(data: dict) -> str:
    run, prev = data["latest"], data["previous"]
    if run is None:
        return f"<!doctype html><meta charset=utf-8><style>{CSS}</style><h1>gptpipe report</h1><p>No runs yet.</p>"
    q = run["quantization"]
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"{CSP}<title>{esc(run['title'])}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{esc(run['title'])}</h1>",
             f"<p class=muted>run {esc(run['run_id'])} · git {esc(run['git_rev'][:10])} · params "
             f"{esc(run['params_hash'])} · {run['created_at']:%Y-%m-%d %H:%M} UTC</p>",
             "<h2>Report card</h2>",
             table(*report_card(run["evals"])) if run["evals"] else "<p class=muted>No evaluations.</p>",
             f"<p class=muted>{esc(scored(run['evals'], run['params']))}</p>",
             *section("What each stage did", [effect_table(run["effects"])], "No stage effects in this run."),
             "<h2>Stages</h2>", table(*stage_table(run["stages"])),
             *section("Quantization", [quantization_table(q, run["evals"])] if q else [],
                      "No quantization in this run."),
             *section("Export", [export_files(run["exports"]), export_checks(run["export_checks"])],
                      "No export in this run."),
             "<h2>Loss curves</h2>", loss_chart(run["curves"]),
             "<h2>Samples</h2>"]
    for s in run["samples"]:
        parts.append(f"<p><b>{esc(s['model'])}</b> · prompt <code>{esc(s['prompt'])}</code></p>"
                     f"<pre>{esc(s['prompt'])}<b>{esc(s['completion'])}</b></pre>")
    if not run["samples"]:
        parts.append("<p class=muted>No samples.</p>")
    parts.append("<h2>Run comparison</h2><div id=compare>")  # the script replaces this with two run pickers
    if prev is None:
        parts.append("<p class=muted>This is the first run.</p>")
    else:
        parts.append(f"<p>previous: {esc(prev['run_id'])}</p><h3>Params that changed</h3>")
        diff = params_diff(prev["params"], run["params"])
        parts.append(table(["param", "before", "now"], diff) if diff else "<p class=muted>None.</p>")
        parts.append("<h3>Evaluation deltas</h3>")
        deltas = eval_deltas(prev["evals"], run["evals"])
        parts.append(table(["model", "task", "metric", "before", "now", "change"], deltas)
                     if deltas else "<p class=muted>No common evaluations.</p>")
    parts.append("</div><h2>Run history</h2>")
    parts.append(table(*history_table(data["runs"])))
    parts.append(json_block("history", history(data["runs"])))
    parts.append(f"<script>{COMPARE_JS}</script></body></html>")
    return "\n".join(parts)
