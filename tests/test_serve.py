"""`gptpipe serve` for real on 127.0.0.1: the official openai client gets generate's greedy answers, streamed or
not; 8 clients at once all get theirs; bad requests get a 4xx with a one-line message and the server keeps
serving; the web page answers in headless Chromium with the model's text shown as text."""

import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import free_port
from test_chat import CONVERSATIONS, GPTPIPE, chatty  # noqa: F401 - the fixture is used by name

from gptpipe import chat, sample, tasks
from gptpipe.tasks import user

KEY = "test-key"
QUESTIONS = [c[0]["content"] for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def greedy(chatty):  # noqa: F811
    bot = chat.load(chatty)
    return {q: r[0].strip() for q, r in zip(QUESTIONS, sample.replies(
        bot.model, bot.tok, [[user(q)] for q in QUESTIONS], "cpu", batch=1, max_new_tokens=16))}


@pytest.fixture(scope="module")
def server(chatty, tmp_path_factory):  # noqa: F811
    """The HF dir served (through its checked GGUF) with an API key, on a free port."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    proc = subprocess.Popen([GPTPIPE, "serve", str(chatty), "--port", str(port), "--api-key", KEY],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"server did not start:\n{log.read()}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:  # never leave a server behind to slow the rest of the suite
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def greedy_with_margin(bot, prompt: list[dict]) -> tuple[str, float]:
    """transformers' greedy reply and its smallest top-1 over top-2 logit gap."""
    import torch

    ids = torch.tensor([bot.encode(prompt)])
    out = bot.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, eos_token_id=bot.tok.eos_token_id,
                             pad_token_id=bot.tok.pad_token_id)
    margin = min(float(s[0].topk(2).values.diff().abs()) for s in out.scores)
    return bot.tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True).strip(), margin


def ask(client, q: str, **kw) -> str:
    r = client.chat.completions.create(model="gptpipe", messages=[user(q)], temperature=0, max_tokens=16, **kw)
    return r.choices[0].message.content.strip()


def test_greedy_answers_equal_generate_streamed_or_not(client, greedy, server, chatty):  # noqa: F811
    assert greedy[QUESTIONS[-1]] == "40" and greedy[QUESTIONS[0]] == "Hi bob!", "the fixture memorized its answers"
    heldout = [r["prompt"] for r in tasks.build(list(tasks.TASKS), 1, 8, 0.2, 0.0, seed=0)["eval"]]
    bot = chat.load(chatty)
    replies = [greedy_with_margin(bot, p) for p in heldout]
    decided = [(p, a) for p, (a, margin) in zip(heldout, replies) if margin > 0.01]  # float error decides a near tie
    assert len(decided) >= 30 and [ask(client, p[0]["content"]) for p, _ in decided] == [a for _, a in decided]
    for q in QUESTIONS:
        assert ask(client, q) == greedy[q], q
        stream = client.chat.completions.create(model="gptpipe", messages=[user(q)], temperature=0, max_tokens=16,
                                                stream=True)
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces).strip() == greedy[q] and len([p for p in pieces if p]) >= 1
    history = [*CONVERSATIONS[1][:3]]  # a second turn that needs the first
    r = client.chat.completions.create(model="gptpipe", messages=history, temperature=0, max_tokens=8)
    assert r.choices[0].message.content.strip() == "ann"
    assert [m.id for m in client.models.list()] == ["gptpipe"]
    assert client.completions.create(model="gptpipe", prompt="Hello", max_tokens=4, temperature=0).choices[0].text
    health = json.load(urllib.request.urlopen(f"{server}/health"))
    assert health["status"] == "ok" and health["context"] > 0


def test_eight_clients_at_once(client, greedy):
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(8 * 3)]  # 8 clients x 3 requests each
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: ask(client, q), jobs))
    assert got == [greedy[q] for q in jobs]


def post(url: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, client, greedy):
    chat_url = f"{server}/v1/chat/completions"
    good = {"model": "gptpipe", "messages": [user(QUESTIONS[-1])], "temperature": 0}
    cases = {
        "unknown model": (json.dumps(good | {"model": "gpt-5"}).encode(), KEY, 404, "not found"),
        "malformed JSON": (b'{"messages": [', KEY, 400, "not valid JSON"),
        "empty messages": (json.dumps(good | {"messages": []}).encode(), KEY, 400, "non-empty list"),
        "longer than the context": (json.dumps(good | {"messages": [user("x " * 400)]}).encode(), KEY, 400, "context"),
        "negative max_tokens": (json.dumps(good | {"max_tokens": -5}).encode(), KEY, 400, "max_tokens"),
        "huge max_tokens": (json.dumps(good | {"max_tokens": 10**9}).encode(), KEY, 400, "max_tokens"),
        "wrong API key": (json.dumps(good).encode(), "nope", 401, "API key"),
        "no API key": (json.dumps(good).encode(), None, 401, "API key"),
    }
    for name, (body, key, status, says) in cases.items():
        code, payload = post(chat_url, body, key)
        message = payload.get("error", {}).get("message", "")
        assert code == status and says in message and "\n" not in message, (name, code, payload)
    code, payload = post(f"{server}/v1/completions", json.dumps({"prompt": ""}).encode())
    assert code == 400 and "prompt" in payload["error"]["message"]
    assert ask(client, QUESTIONS[-1]) == greedy[QUESTIONS[-1]], "still serving"


def test_commands_refuse_bad_input_in_one_line(tmp_path, server):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    taken = server.rsplit(":", 1)[1]
    for args, says in (([str(tmp_path / "missing")], "no such model"), ([str(fake)], "not a GGUF file"),
                       ([str(fake), "--port", taken], "cannot listen"),
                       ([str(fake), "--host", "0.0.0.0"], "--allow-remote")):
        r = subprocess.run([GPTPIPE, "serve", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_web_page_in_chromium(server, greedy, tmp_path):
    import test_report_browser as rb

    if rb.CHROMIUM is None:
        pytest.skip("chromium not found; scripts/test.sh installs it where apt-get can")
    browser = rb.Browser(tmp_path / "profile")
    try:
        tab = browser.open(f"{server}/")
        assert browser.js(tab, "document.getElementById('temperature').value") == "0.7", "sampling shown"

        def say(text: str) -> str:
            n = browser.js(tab, "document.querySelectorAll('.assistant, .error').length")
            browser.js(tab, f"document.getElementById('question').value = {json.dumps(text)};"
                            "document.getElementById('send').click()")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = browser.js(tab, "[...document.querySelectorAll('[data-done]')].map(e => e.textContent)")
                if len(done) > n:
                    return done[-1]
                time.sleep(0.2)
            raise AssertionError("no reply on the page")

        browser.js(tab, f"document.getElementById('api_key').value = {json.dumps(KEY)};"
                        "document.getElementById('temperature').value = '0';"
                        "document.getElementById('max_tokens').value = '16'")
        assert say(QUESTIONS[-1]) == greedy[QUESTIONS[-1]]
        browser.js(tab, "document.getElementById('reset').click()")  # a new conversation: no history
        script = next(q for q, a in greedy.items() if "<script>" in a)
        assert say(script) == greedy[script], "the model's markup shows as text"
        assert browser.js(tab, "document.querySelectorAll('#log script, #log b, #log img').length") == 0
        browser.js(tab, "document.getElementById('api_key').value = 'wrong'")
        assert "API key" in say("hello")
        api = f"{server}/v1/chat/completions"
        problems = [p for p in browser.problems(tab, f"{server}/") if p != f"request: {api}"
                    and "401" not in p]  # the wrong key's answer is logged by the browser as a failed load
        assert problems == []
    finally:
        browser.close()
