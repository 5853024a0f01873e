"""Chat tasks: right answers, disjoint splits, TRL formats, determinism, the checker; and the same sets
from local `datasets` files (tasks.source: hf), with bad data refused."""

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from transformers import AutoTokenizer

from gptpipe import chat_data, tasks
from gptpipe.config import TasksHF
from gptpipe.errors import UserError

from conftest import REPO


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
        q, a, w = tasks.next_number(r)
        n, ns = q.removeprefix("Which number comes after ").removesuffix("?").split(" in: ")
        ns = ns.split()
        assert a == ns[ns.index(n) + 1] and w != a and w in ns
        q, a, w = tasks.copy(r)
        assert a == q.removeprefix("Repeat after me:\n") and w != a
        q, a, w = tasks.reverse(r)
        assert a.split() == q.split(": ")[1].split()[::-1] and w != a
        q, a, w = tasks.last_word(r)
        assert a == q.splitlines()[-1] and w != a


def test_answers_are_spelled_with_the_questions_tokens(micro_data):
    """BPE spells " cake" and "cake" differently: a reply must reuse the question's tokens to be learnable."""
    import random
    tok = AutoTokenizer.from_pretrained(micro_data[1]["tokenizer"])
    r = random.Random(0)
    for task in tasks.TASKS.values():
        for _ in range(20):
            q, a, _ = task(r)
            ids = tok(q, add_special_tokens=False).input_ids
            assert set(tok(a, add_special_tokens=False).input_ids) <= set(ids), (q, a)


def test_splits_are_disjoint_and_deterministic(sets):
    sft = {m["content"] for r in sets["sft"] for m in r["messages"] if m["role"] == "user"}
    train = {r["prompt"][0]["content"] for r in sets["rl"]}
    held = {r["prompt"][0]["content"] for r in sets["eval"]}
    assert sft and train and held and not train & held and not sft & held and not sft & train
    assert {r["prompt"][0]["content"] for r in sets["prefs_train"]} == train
    assert {r["prompt"][0]["content"] for r in sets["prefs_heldout"]} == held
    assert len(tasks.build(["copy"], 80, 20, 0.2, 0.5, seed=3, n_rl=30)["rl"]) == 30
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


# ---------------------------------------------------------------- tasks.source: hf (local files)
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def hf_files(tmp_path):
    """The three shapes: smoltalk-like messages (parquet), ultrafeedback-like conversations and
    prompt/chosen/rejected strings (jsonl), gsm8k-like question/answer (jsonl)."""
    def msg(role, content):
        return {"role": role, "content": content}
    sft = [[msg("system", "Be brief."), msg("user", f"Say {i}."), msg("assistant", f"{i}")] if i % 3 == 0 else
           [msg("user", f"Hi {i}"), msg("assistant", "Hello!"), msg("user", "Again?"), msg("assistant", f"Hi {i}")]
           for i in range(30)]
    pq.write_table(pa.table({"messages": sft, "source": ["x"] * 30}), tmp_path / "sft.parquet")
    conv = [{"chosen": [msg("user", f"Capital of country {i}?"), msg("assistant", f"City {i}.")],
             "rejected": [msg("user", f"Capital of country {i}?"), msg("assistant", "No idea.")],
             "score_chosen": 8.0, "score_rejected": 2.0} for i in range(200)]
    strs = [{"prompt": f"Name color {i}", "chosen": "Blue.", "rejected": "Seven."} for i in range(40)]
    rl = [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
           "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"} for i in range(200)]
    return {"sft": str(tmp_path / "sft.parquet"), "conv": write_jsonl(tmp_path / "conv.jsonl", conv),
            "strs": write_jsonl(tmp_path / "strs.jsonl", strs), "rl": write_jsonl(tmp_path / "rl.jsonl", rl),
            "dir": tmp_path}


def hf_params(f, sft=None, prefs=None, rl=None) -> dict:
    src = {"name": None, "split": "train", "streaming": False, "max_rows": None}
    return {"sft": src | {"path": "parquet", "data_files": f["sft"], "streaming": True,
                          "messages_field": "messages"} | (sft or {}),
            "prefs": src | {"path": "json", "data_files": f["conv"], "prompt_field": None, "chosen_field": "chosen",
                            "rejected_field": "rejected", "heldout_fraction": 0.2} | (prefs or {}),
            "rl": src | {"path": "json", "data_files": f["rl"], "question_field": "question", "answer_field": "answer",
                         "answer_pattern": r"####\s*(.+)", "heldout_fraction": 0.2} | (rl or {})}


def test_hf_sets_have_the_synthetic_formats(hf_files, micro_data):
    sets = chat_data.build(TasksHF(**hf_params(hf_files, sft={"max_rows": 20})), seed=0)
    assert list(sets) == ["sft", "prefs_train", "prefs_heldout", "rl", "eval"]
    assert len(sets["sft"]) == 20 and {r["task"] for r in sets["sft"]} == {"hf_sft"}
    assert sets["sft"][0]["messages"] == [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Say 0."}, {"role": "assistant", "content": "0"}]
    assert len(sets["prefs_train"]) + len(sets["prefs_heldout"]) == 200
    assert 10 < len(sets["prefs_heldout"]) < 70
    p = sets["prefs_train"][0]
    assert set(p) == {"task", "prompt", "chosen", "rejected"} and p["task"] == "hf_prefs"
    assert p["prompt"] == [{"role": "user", "content": p["prompt"][0]["content"]}]
    assert p["chosen"][0]["role"] == "assistant" and p["rejected"] == [{"role": "assistant", "content": "No idea."}]
    assert len(sets["rl"]) + len(sets["eval"]) == 200 and 10 < len(sets["eval"]) < 70
    for r in sets["rl"] + sets["eval"]:
        assert set(r) == {"task", "prompt", "answer"} and r["task"] == "hf_rl"
        n = int(r["prompt"][0]["content"].split()[2])
        assert r["answer"] == str(n + 2) and tasks.check(f"{n + 2}.", r["answer"])
    tok = AutoTokenizer.from_pretrained(micro_data[1]["tokenizer"])  # every row renders with our chat template
    for messages in [sets["sft"][0]["messages"], sets["sft"][1]["messages"], p["prompt"] + p["chosen"]]:
        assert tok.apply_chat_template(messages, tokenize=False).endswith("<|assistant_end|>")


def test_hf_heldout_split_is_disjoint_and_deterministic(hf_files):
    cfg = TasksHF(**hf_params(hf_files))
    sets = chat_data.build(cfg, seed=0)
    for train, held in [("prefs_train", "prefs_heldout"), ("rl", "eval")]:
        a = {r["prompt"][-1]["content"] for r in sets[train]}
        b = {r["prompt"][-1]["content"] for r in sets[held]}
        assert a and b and not a & b
    assert chat_data.build(cfg, seed=0) == sets
    assert chat_data.build(cfg, seed=1)["eval"] != sets["eval"]


def test_hf_prompt_and_reply_strings(hf_files):
    train, held = chat_data.prefs(TasksHF(**hf_params(hf_files, prefs={
        "path": "json", "data_files": hf_files["strs"], "prompt_field": "prompt", "heldout_fraction": 0.5})).prefs, 0)
    assert len(train) + len(held) == 40 and train and held
    assert train[0]["prompt"] == [{"role": "user", "content": train[0]["prompt"][0]["content"]}]
    assert train[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert train[0]["rejected"] == [{"role": "assistant", "content": "Seven."}]


def test_hf_bad_data_is_refused_with_the_place_and_fix(hf_files):
    d = hf_files["dir"]
    no_assistant = [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
                    [{"role": "user", "content": "anyone?"}]]
    pq.write_table(pa.table({"messages": no_assistant}), d / "bad_sft.parquet")
    no_answer = [{"question": "What is 1 + 1?", "answer": "#### 2"}, {"question": "What is 2 + 2?", "answer": "four"}]
    (d / "empty.jsonl").write_text("")
    cases = [
        ({"sft": {"messages_field": "conversation"}},
         r"tasks.hf.sft.messages_field: column 'conversation' not in dataset 'parquet'; "
         r"it has \['messages', 'source'\]. Set tasks.hf.sft.messages_field"),
        ({"sft": {"data_files": str(d / "bad_sft.parquet")}},
         r"tasks.hf.sft \(parquet\) row 1, column 'messages': the conversation has no assistant turn"),
        ({"rl": {"data_files": write_jsonl(d / "bad_rl.jsonl", no_answer)}},
         r"tasks.hf.rl \(json\) row 1, column 'answer': tasks.hf.rl.answer_pattern '####\\s\*\(\.\+\)' finds no "
         r"final answer in 'four'"),
        ({"prefs": {"data_files": hf_files["strs"]}},
         r"tasks.hf.prefs \(json\) row 0: 'chosen' is a string.*set tasks.hf.prefs.prompt_field"),
        ({"rl": {"data_files": str(d / "empty.jsonl")}},
         r"tasks.hf.rl: cannot load dataset 'json' \(.*are the files empty\?\). Check tasks.hf.rl.path"),
    ]
    for over, match in cases:
        with pytest.raises(UserError, match=match):
            chat_data.build(TasksHF(**hf_params(hf_files, **over)), seed=0)


def test_stage_writes_hf_sets_and_writes_nothing_on_bad_data(hf_files, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tasks"] |= {"source": "hf", "hf": hf_params(hf_files)}
    raw["allow_outside_paths"] = True  # the data files sit beside the workspace, in tmp_path
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "dvc.yaml", ws)  # the runner reads which paths are the stage's outputs from it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "stages.tasks"], cwd=ws, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = ws / "data/raw/tasks"
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "prefs_heldout.jsonl", "prefs_train.jsonl",
                                                     "rl.jsonl", "sft.jsonl"]
    assert json.loads((out / "sft.jsonl").read_text().splitlines()[0])["task"] == "hf_sft"
    before = {p.name: p.read_text() for p in out.iterdir()}

    raw["tasks"]["hf"]["rl"]["answer_field"] = "solution"
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "stages.tasks"], cwd=ws, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "tasks.hf.rl.answer_field: column 'solution'" in run.stderr
    assert "Traceback" not in run.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == before
