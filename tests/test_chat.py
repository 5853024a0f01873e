"""`gptpipe chat` on a real model, HF dir and GGUF: greedy replies equal generate's, streamed in pieces, the
history carried into the next turn (driven in a real terminal, tmux), bad paths refused in one line."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from gptpipe import chat, sample
from gptpipe import gguf as g
from gptpipe.model import llama_config, save
from gptpipe.tasks import assistant, user

NAMES = ["bob", "ann", "tom", "sue"]
# Each second answer needs the first turn: with the history the model can say the name, without it cannot.
CONVERSATIONS = (
    [[user(f"My name is {n}."), assistant(f"Hi {n}!"), user("What is my name?"), assistant(n)] for n in NAMES]
    + [[user("Show me some markup."), assistant("<b>hi</b><script>alert(1)</script>")]]  # for the web page
    + [[user(f"Which is larger, {a} or {b}?"), assistant(str(max(a, b)))] for a, b in ((3, 71), (50, 8), (12, 40))])
GPTPIPE = str(Path(sys.executable).parent / "gptpipe")


@pytest.fixture(scope="module")
def chatty(micro_data, tmp_path_factory):
    """A micro model that has memorized CONVERSATIONS, so its greedy replies have clear margins."""
    p, dirs = micro_data
    tok = AutoTokenizer.from_pretrained(dirs["tokenizer"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(p.model, len(tok)))
    enc = tok.apply_chat_template(CONVERSATIONS, tokenize=True, return_dict=True, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("chatty")
    save(model, tok, out)
    return out


@pytest.fixture(scope="module")
def chatty_gguf(chatty, tmp_path_factory):
    return g.write(chatty, tmp_path_factory.mktemp("chatty_gguf") / "model-f32.gguf", "f32")


def one_shot(model: Path, question: str) -> subprocess.CompletedProcess:
    return subprocess.run([GPTPIPE, "chat", str(model), "-p", question, "--temperature", "0"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_one_shot_greedy_equals_generate(chatty, chatty_gguf):
    bot = chat.load(chatty)
    questions = [c[0]["content"] for c in CONVERSATIONS]
    want = [r[0].strip() for r in sample.replies(bot.model, bot.tok, [[user(q)] for q in questions], "cpu", batch=1)]
    assert want[-3:] == ["71", "50", "40"] and want[0] == "Hi bob!", "the fixture memorized its answers"
    for model, (q, a) in ((chatty, (questions[0], want[0])), (chatty_gguf, (questions[-1], want[-1]))):
        r = one_shot(model, q)
        assert r.returncode == 0 and r.stdout.strip() == a, (model, q, r.stderr)
    gguf_bot = chat.load(chatty_gguf)
    for q, a in zip(questions, want):
        assert chat.reply(gguf_bot, [user(q)], chat.Sampling(temperature=0, max_new_tokens=12),
                          out=open(os.devnull, "w")) == a, q
    pieces = list(bot.stream([user(questions[0])], chat.Sampling(temperature=0)))
    assert len(pieces) > 1 and "".join(pieces).strip() == want[0], "streamed token by token"


def test_history_is_kept_and_trimmed_to_the_context(chatty):
    bot = chat.load(chatty)
    s = chat.Sampling(temperature=0, max_new_tokens=8)
    for name in ("bob", "ann"):
        history = [user(f"My name is {name}."), assistant(f"Hi {name}!"), user("What is my name?")]
        assert chat.reply(bot, history, s, out=open(os.devnull, "w")) == name
    long = [user("x " * 20), assistant("y " * 20)] * 4 + [user("What is my name?")]
    kept = chat.fit(bot, long, s)
    assert kept[-1] == long[-1] and len(kept) < len(long) and len(kept) % 2 == 1, "oldest exchanges dropped"
    with pytest.raises(chat.UserError, match="longer than the model's context"):
        chat.fit(bot, [user("x " * 200)], s)


@pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux (scripts/test.sh installs it where apt-get can)")
def test_chat_in_a_real_terminal(chatty, tmp_path):
    tmux = ["tmux", "-L", f"gptpipe-test-{tmp_path.name}"]

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "chat"], capture_output=True, text=True).stdout

    def wait_for(text: str, count: int = 1) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (s := screen()).count(text) >= count:
                return s
            time.sleep(0.2)
        raise AssertionError(f"never saw {text!r} x{count}:\n{screen()}")

    def send(line: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", "chat", "-l", line], check=True)
        subprocess.run([*tmux, "send-keys", "-t", "chat", "Enter"], check=True)

    subprocess.run([*tmux, "new-session", "-d", "-s", "chat", "-x", "120", "-y", "40",
                    f"{GPTPIPE} chat {chatty} --temperature 0; echo chat-exited-$?; sleep 60"], check=True)
    try:
        wait_for("you>")
        send("My name is sue.")
        assert "model> Hi sue!" in wait_for("you>", 2)
        send("What is my name?")
        assert "model> sue\n" in wait_for("you>", 3), "the second turn saw the first"
        send("/reset")
        wait_for("(new conversation)")
        send("/quit")
        wait_for("chat-exited-0")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_bad_models_are_refused_in_one_line(tmp_path, chatty):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    (tmp_path / "empty").mkdir()
    for path, says in ((tmp_path / "missing", "no such model"), (fake, "not a GGUF file"),
                       (tmp_path / "empty", "no config.json")):
        r = one_shot(path, "hi")
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([GPTPIPE, "chat", str(chatty), "-p", "hi", "--top-p", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--top-p" in r.stderr
