"""Synthetic chat tasks: right answers, disjoint splits, TRL formats, determinism, the checker."""

import pytest
from transformers import AutoTokenizer

from gptpipe import tasks


@pytest.fixture(scope="module")
def sets():
    return tasks.build(list(tasks.TASKS), 80, 20, 0.2, 0.5, seed=3)


def test_answers_are_right_and_wrong_answers_are_wrong():
    import random
    r = random.Random(0)
    for _ in range(200):
        q, a, w = tasks.compare(r)
        x, y = map(int, q.removeprefix("Which is larger, ").removesuffix("?").split(" or "))
        assert int(a) == max(x, y) and int(w) == min(x, y)
        q, a, w = tasks.add(r)
        x, y = map(int, q.removeprefix("What is ").removesuffix("?").split(" + "))
        assert int(a) == x + y and w != a
        q, a, w = tasks.reverse(r)
        assert a == q.split(": ")[1][::-1] and w != a
        q, a, w = tasks.last_word(r)
        assert a == q.rstrip("?").split()[-1] and w != a


def test_splits_are_disjoint_and_deterministic(sets):
    train = {r["prompt"][0]["content"] for r in sets["rl"]}
    held = {r["prompt"][0]["content"] for r in sets["eval"]}
    assert train and held and not train & held
    assert {r["prompt"][0]["content"] for r in sets["prefs_heldout"]} == held
    assert tasks.build(list(tasks.TASKS), 80, 20, 0.2, 0.5, seed=3) == sets
    assert tasks.build(list(tasks.TASKS), 80, 20, 0.2, 0.5, seed=4) != sets


def test_formats_render_with_the_chat_template(sets, micro_data):
    tok = AutoTokenizer.from_pretrained(micro_data[1]["tokenizer"])
    multi = [r for r in sets["sft"] if len(r["messages"]) == 4]
    assert multi and len(multi) < len(sets["sft"])
    text = tok.apply_chat_template(multi[0]["messages"], tokenize=False)
    assert text.count("<|assistant_start|>") == 2 and text.endswith("<|assistant_end|>")
    p = sets["prefs_train"][0]
    assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["content"] != p["rejected"][0]["content"]


def test_checker():
    assert tasks.check(" 42.\nbecause", "42") and tasks.check("meet", "meet")
    assert not tasks.check("", "42") and not tasks.check("4 2", "42") and not tasks.check("142", "42")
