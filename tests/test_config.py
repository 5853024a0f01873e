"""params.yaml loading: the shipped files validate; every bad input names its key."""

import itertools
import re
import subprocess
import sys

import pytest

from gptpipe.config import deep_merge, load_params, parse_set, read_yaml, validate
from gptpipe.errors import UserError

from conftest import REPO


def raw():
    return read_yaml(REPO / "params.yaml")


def test_default_and_profiles_validate():
    p = load_params(REPO / "params.yaml")
    assert p.model.d_model == p.model.depth * p.model.aspect_ratio
    for overlay in (REPO / "profiles").glob("*.yaml"):
        validate(deep_merge(raw(), read_yaml(overlay)), overlay.name)


def test_profiles_switch_in_any_order():
    """Each profile sets every key any profile sets, so `profile use B` gives the same params.yaml whatever
    profile was applied before it (an overlay that left a key out would inherit the previous profile's)."""
    overlays = {f.stem: read_yaml(f) for f in (REPO / "profiles").glob("*.yaml")}
    for a, b in itertools.permutations(overlays, 2):
        once, twice = deep_merge(raw(), overlays[b]), deep_merge(deep_merge(raw(), overlays[a]), overlays[b])
        assert twice == once, f"{a} then {b} keeps {a}'s {diff_keys(once, twice)}: add them to profiles/{b}.yaml"


def diff_keys(x: dict, y: dict, pre: str = "") -> list[str]:
    return [k for key in x.keys() | y.keys() for k in (
        diff_keys(x[key], y[key], f"{pre}{key}.") if isinstance(x.get(key), dict) and isinstance(y.get(key), dict)
        else [pre + key] if x.get(key) != y.get(key) else [])]


def test_depth_rule_and_overrides():
    p = load_params(REPO / "params.yaml", ["model.depth=6", "model.aspect_ratio=64", "model.head_dim=64"])
    assert (p.model.d_model, p.model.heads, p.model.kv_heads) == (384, 6, 3)
    p = load_params(REPO / "params.yaml", ["model.width=96", "model.n_head=3", "model.n_kv_head=1"])
    assert (p.model.d_model, p.model.heads, p.model.kv_heads) == (96, 3, 1)


@pytest.mark.parametrize("sets, key, words", [
    (["pretrain.lrr=0.1"], "pretrain.lrr", "unknown key"),
    (["nosuchsection={}"], "nosuchsection", "unknown key"),
    (["pretrain.lr=-1"], "pretrain.lr", "greater than 0"),
    (["pretrain.lr=fast"], "pretrain.lr", "valid number"),
    (["pretrain.batch_size=2.5"], "pretrain.batch_size", "valid integer"),
    (["model.width=100", "model.n_head=3"], "model", "must divide the width"),
    (["model.n_head=4", "model.n_kv_head=3"], "model", "must divide model.n_head"),
    (["pretrain.seq_len=512"], "pretrain.seq_len", "model.max_seq_len"),
    (["pretrain.total_batch_tokens=1000"], "total_batch_tokens", "multiple of"),
    (["pretrain.schedule=linear"], "pretrain.schedule", "cosine"),
    (["data.source=web"], "data.source", "stdlib"),
    (["data.val_fraction=0.9"], "data.val_fraction", "less than 0.5"),
    (["tokenizer.vocab_size=100"], "tokenizer.vocab_size", "greater than or equal to 512"),
    (["evaluate.prompts=[]"], "evaluate.prompts", "at least 1"),
    (["tasks.source=web"], "tasks.source", "'synthetic' or 'hf'"),
    (["tasks.source=hf"], "tasks", "tasks.hf is not set"),
    (["pretrain.nnodes=2"], "pretrain", "rdzv_endpoint is not set"),
    (["midtrain.rdzv_endpoint=node0"], "midtrain.rdzv_endpoint", "not HOST:PORT"),
    (["pretrain.rdzv_endpoint=10.0.0.1:99999"], "pretrain.rdzv_endpoint", "not HOST:PORT"),
])
def test_bad_values_name_the_key(sets, key, words):
    with pytest.raises(UserError) as e:
        load_params(REPO / "params.yaml", sets)
    assert key in str(e.value) and words in str(e.value), str(e.value)


def test_missing_key_and_bad_yaml(tmp_path):
    r = raw()
    del r["pretrain"]["lr"]
    with pytest.raises(UserError, match=r"pretrain.lr: missing key"):
        validate(r)
    f = tmp_path / "params.yaml"
    f.write_text("pretrain: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(f)
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_tasks_hf_section():
    src = {"name": None, "split": "train", "data_files": "data/x.jsonl", "streaming": False, "max_rows": 10}
    hf = {"sft": src | {"path": "json", "messages_field": "messages"},
          "prefs": src | {"path": "json", "prompt_field": None, "chosen_field": "chosen", "rejected_field": "rejected",
                          "heldout_fraction": 0.1},
          "rl": src | {"path": "json", "question_field": "question", "answer_field": "answer",
                       "answer_pattern": "####\\s*(.+)", "heldout_fraction": 0.1}}
    r = raw()
    r["tasks"] |= {"source": "hf", "hf": hf}
    assert validate(r).tasks.hf.rl.answer_pattern == "####\\s*(.+)"
    for path, value, words in [(("rl", "answer_regex"), "x", "tasks.hf.rl.answer_regex: unknown key"),
                               (("rl", "answer_pattern"), "####(", "tasks.hf.rl: answer_pattern '####(' is not a valid"),
                               (("prefs", "heldout_fraction"), 1.5, "tasks.hf.prefs.heldout_fraction"),
                               (("sft", "max_rows"), 0, "tasks.hf.sft.max_rows")]:
        bad = deep_merge(r, {"tasks": {"hf": {path[0]: {path[1]: value}}}})
        with pytest.raises(UserError, match=re.escape(words)):
            validate(bad)
    del r["tasks"]["hf"]["sft"]["messages_field"]
    with pytest.raises(UserError, match="tasks.hf.sft.messages_field: missing key"):
        validate(r)


def test_parse_set():
    assert parse_set(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set(["pretrain.lr"])


def test_cli_reports_bad_param_without_traceback():
    r = subprocess.run([sys.executable, "-m", "gptpipe.cli", "params", "--set", "pretrain.lr=-1"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "pretrain.lr" in r.stderr and "Traceback" not in r.stderr


def test_profile_use_keeps_comments_and_refuses_bad_values(tmp_path, monkeypatch):
    from gptpipe import profile

    (tmp_path / "profiles").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "profiles" / "fast.yaml").write_text("pretrain:\n  lr: 0.01\n")
    (tmp_path / "profiles" / "broken.yaml").write_text("pretrain:\n  lr: -3\n")
    monkeypatch.chdir(tmp_path)
    profile.use("fast")
    text = (tmp_path / "params.yaml").read_text()
    assert "lr: 0.01" in text and "# bf16 autocast on CUDA" in text
    assert load_params().pretrain.lr == 0.01
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(UserError, match="pretrain.lr"):
        profile.use("broken")
    with pytest.raises(UserError, match="known profiles: broken, fast"):
        profile.use("nope")
    assert (tmp_path / "params.yaml").read_text() == before
