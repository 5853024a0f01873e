"""The report page in a real browser (headless Chromium): its script runs without a console error, fills
the run comparison and answers the run pickers, and text from the runs shows as text, never as markup.

Chromium is driven over the DevTools protocol on a pipe rather than by reading its log: the log prints
console errors at the same level as console.log, while the protocol reports exceptions, console errors,
CSP violations, dialogs (alert) and requests as separate events.
"""

import json
import os
import select
import shutil
import subprocess
import time

import pytest
from test_report import EFFECTS, quantized_workspace, workspace

from gptpipe.report import db, html

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found; scripts/test.sh installs it "
                                                         "with `apt-get install -y chromium` where it can")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


class Browser:
    """One headless Chromium. The protocol pipe is fd 3 (commands in) and fd 4 (replies and events out)
    of the browser, each message JSON ended by a NUL byte; no port and no websocket library needed."""

    def __init__(self, profile_dir):
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.log = open(profile_dir.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile_dir}"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, pass_fds=(3, 4),
                                     preexec_fn=lambda: (os.dup2(cmd_r, 3), os.dup2(out_w, 4)))
        os.close(cmd_r)
        os.close(out_w)
        self.buf, self.events, self.next_id = b"", [], 0

    def recv(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            if not select.select([self.out_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.out_r, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium exited; see {self.log.name}")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        m = json.loads(msg)
        if m.get("method") == "Page.javascriptDialogOpening":  # an open alert would block the page
            self.post("Page.handleJavaScriptDialog", m.get("sessionId"), accept=True)
        if "method" in m:
            self.events.append(m)
        return m

    def post(self, method: str, session: str | None = None, **params) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def call(self, method: str, session: str | None = None, timeout: float = 10, **params) -> dict:
        sent, deadline = self.post(method, session, **params), time.monotonic() + timeout
        while (m := self.recv(deadline)).get("id") != sent:
            pass
        if "error" in m:
            raise RuntimeError(f"{method}: {m['error']}")
        return m["result"]

    def open(self, url: str, timeout: float = 10) -> str:
        """A new tab that has loaded `url` (its scripts have run); returns its session id."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        s = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", s)
        self.call("Page.navigate", s, url=url)
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" and e.get("sessionId") == s for e in self.events):
            self.recv(deadline)
        return s

    def js(self, session: str, expression: str):
        r = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def problems(self, session: str, page_url: str) -> list[str]:
        """Everything on this tab a reader would call broken or unsafe: uncaught exceptions, console
        errors, browser errors (CSP violations, failed loads), dialogs, and requests for anything but the page."""
        out = []
        for e in (e for e in self.events if e.get("sessionId") == session):
            m, p = e["method"], e["params"]
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d['text']}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                out.append(f"console.{p['type']}: {args}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"browser error: {p['entry']['text']}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p['type']} {p['message']}")
            elif m == "Network.requestWillBeSent" and p["request"]["url"] != page_url:
                out.append(f"request: {p['request']['url']}")
        return out

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (EOFError, TimeoutError, OSError):
            pass  # it is going away either way
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.out_r)
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def test_report_in_browser(tmp_path, browser):
    dbf = tmp_path / "r.duckdb"
    db.record_run(dbf, quantized_workspace(tmp_path / "ws"), title="first")
    ws = workspace(tmp_path / "ws", lr=0.002, bpb=1.25, completion=EVIL)
    with open(ws / "params.yaml", "a") as f:  # a param only the second run has, shown by the script
        f.write(f"  note: {json.dumps(EVIL)}\n")
    (ws / "reports/effects.json").write_text(json.dumps(EFFECTS))  # with a regression, shown in red
    db.record_run(dbf, ws, title="<b>second</b>")
    page = tmp_path / "index.html"
    page.write_text(html.render(db.load(dbf)))
    url = page.as_uri()

    tab = browser.open(url)
    dom = browser.js(tab, "document.documentElement.outerHTML")
    assert "<th>task</th><th>metric</th><th>unigram</th><th>base</th>" in dom  # the report card
    assert "<td>size (MB)</td><td>7.152</td>" in dom  # quantization from the first run's files
    assert browser.js(tab, "document.querySelector('h1').textContent") == "<b>second</b>"
    assert EVIL in browser.js(tab, "[...document.querySelectorAll('pre b')].map(b => b.textContent)")  # the sample
    style = "(q, p) => getComputedStyle(document.querySelector(q))[p]"  # our stylesheet applies under the CSP
    assert browser.js(tab, f"({style})('td.bad', 'color')") == "rgb(187, 0, 0)"
    assert browser.js(tab, f"({style})('.panels', 'display')") == "flex"

    def comparison():  # what the script put in place of the static comparison, as cell texts
        return browser.js(tab, "[...document.querySelectorAll('#compare tr')]"
                               ".map(tr => [...tr.cells].map(c => c.textContent))")

    assert browser.js(tab, "document.querySelectorAll('#compare select').length") == 2
    assert "previous:" not in browser.js(tab, "document.getElementById('compare').textContent")
    rows = comparison()
    assert ["pretrain.lr", "0.003", "0.002"] in rows and ["val/bpb/base", "1.5", "1.25", "-0.25"] in rows
    assert ["report.note", "–", EVIL] in rows and ["report.title", "t", "t"] not in rows  # unchanged: left out

    pick = ("(i, v) => { const s = document.querySelectorAll('#compare select')[i]; "
            "s.value = v; s.dispatchEvent(new Event('change')); }")
    browser.js(tab, f"({pick})(0, '0'), ({pick})(1, '1')")  # swapped: the second run before the first
    rows = comparison()
    assert ["pretrain.lr", "0.002", "0.003"] in rows and ["val/bpb/base", "1.25", "1.5", "+0.25"] in rows
    browser.js(tab, f"({pick})(1, '0')")  # a run against itself: no params changed, every delta 0
    rows = comparison()
    assert rows[0] == ["task/metric/model", "before", "now", "change"] and {r[3] for r in rows[1:]} == {"0"}
    assert "None." in browser.js(tab, "document.getElementById('compare').textContent")

    assert browser.js(tab, "document.querySelectorAll('img, h1 *, pre script, [onerror]').length") == 0
    assert browser.problems(tab, url) == []


def test_broken_pages_are_caught(tmp_path, browser):
    """The checks above can fail: a script error, console.error, an alert, a blocked inline script and a
    request for another file are each reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><img src=missing.png>"
                   "<script>console.error('boom'); alert('hi'); nosuch();</script>")
    tab = browser.open(bad.as_uri())
    found = "\n".join(browser.problems(tab, bad.as_uri()))
    for expected in ("console.error: boom", "dialog: alert hi", "nosuch is not defined", "missing.png"):
        assert expected in found

    csp = tmp_path / "csp.html"
    csp.write_text(f'<!doctype html>{html.CSP}<script>document.title = "ran"</script>')
    tab = browser.open(csp.as_uri())
    assert any("Content Security Policy" in p for p in browser.problems(tab, csp.as_uri()))
    assert browser.js(tab, "document.title") != "ran"


def test_dvc_plots_draw_offline(tmp_path, browser):
    """`dvc plots show` with the page .dvc/config names: every training curve drawn, nothing fetched (DVC's own
    page loads vega from a CDN, which a machine without internet never gets)."""
    from conftest import REPO, sh

    ws = tmp_path / "ws"
    (ws / ".dvc").mkdir(parents=True)
    for f in (".dvc/config", ".dvc/plots.html", "dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, ws / f)
    (ws / "plots").mkdir()
    for stage, x in (("pretrain", "tokens"), ("sft", "step")):
        (ws / "plots" / f"{stage}.csv").write_text(f"step,{x},loss\n" if x != "step" else "step,loss\n")
        with open(ws / "plots" / f"{stage}.csv", "a") as f:
            f.writelines(f"{i},{i * 100},{5 / i}\n" if x != "step" else f"{i},{5 / i}\n" for i in range(1, 20))
    sh(["git", "init", "-q"], ws)
    sh(["dvc", "plots", "show"], ws)
    page = ws / "dvc_plots" / "index.html"
    tab = browser.open(page.as_uri())
    drawn = "document.querySelectorAll('.vega-embed .marks').length"  # vega's canvas, one per chart drawn
    charts = browser.js(tab, "document.querySelectorAll('.vega-embed').length")  # one per plot of dvc.yaml
    deadline = time.monotonic() + 10
    while browser.js(tab, drawn) < charts and time.monotonic() < deadline:
        time.sleep(0.2)
    assert charts >= 2 and browser.js(tab, drawn) == charts
    assert browser.problems(tab, page.as_uri()) == []

    (ws / ".dvc/config").write_text("[core]\n    analytics = false\n")  # DVC's own page: it asks the CDN
    sh(["dvc", "plots", "show"], ws)
    tab = browser.open(page.as_uri())
    assert any("cdn.jsdelivr.net" in p for p in browser.problems(tab, page.as_uri()))
