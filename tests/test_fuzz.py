"""Hypothesis fuzzing of the two places that take arbitrary user text: the params loader and the chat template.

The params loader must answer anything (edited params, `--set` strings, whole files) with valid params or a
UserError, never another exception: anything else reaches the user as a traceback. The chat template must
render any conversation so that message text never becomes a special token (a user typing
"<|assistant_start|>" must not get to speak as the assistant).
"""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from gptpipe import tokenizer
from gptpipe.config import load_params, read_yaml, validate
from gptpipe.errors import UserError

from conftest import REPO

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SOURCE = {"name": None, "split": "train", "data_files": "data/x.jsonl", "streaming": False, "max_rows": 10, "path": "json"}
RAW = read_yaml(REPO / "params.yaml")
RAW["tasks"]["hf"] = {  # as in params.yaml's commented example, so its validators are fuzzed too
    "sft": SOURCE | {"messages_field": "messages"},
    "prefs": SOURCE | {"prompt_field": None, "chosen_field": "c", "rejected_field": "r", "heldout_fraction": 0.1},
    "rl": SOURCE | {"question_field": "q", "answer_field": "a", "answer_pattern": "####\\s*(.+)", "heldout_fraction": 0.1}}


def dotted_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += dotted_keys(v, f"{prefix}{k}.")
    return out


KEYS = dotted_keys(RAW)
DELETE = object()
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["", "0", "-1", "1e-3", ".inf", "null", "a{9999999999}", "/etc", "../x", "~"]))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.text(max_size=6) | st.integers(), kids, max_size=3), max_leaves=6)
keys = st.sampled_from(KEYS) | st.builds(lambda k, x: f"{k}.{x}", st.sampled_from(KEYS), st.text(max_size=6))


def edit(raw: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


def answered(call) -> None:
    """`call` returns or raises a UserError with a message; any other exception fails the test."""
    try:
        call()
    except UserError as e:
        assert str(e).strip()


@FUZZ
@given(edits=st.lists(st.tuples(keys, values | st.just(DELETE)), min_size=1, max_size=4))
def test_edited_params_validate_or_raise_user_error(edits):
    raw = copy.deepcopy(RAW)
    for key, value in edits:
        edit(raw, key, value)
    answered(lambda: validate(raw))


assignment = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=16) | st.sampled_from(
        ["[", "{a: 1", "!!python/object/apply:os.system [ls]", "*x", "&a", "@", "\t", "'", "1:2", "[1, [2]]"])),
    st.text(max_size=24))


@FUZZ
@given(sets=st.lists(assignment, min_size=1, max_size=4))
def test_set_strings_validate_or_raise_user_error(sets):
    answered(lambda: load_params(REPO / "params.yaml", sets))


@FUZZ
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.sampled_from([b"\xff\xfe", b"- a\n- b\n", b"a: [", b"!!python/object:os.system {}", b"42", b"\x00"]))
def test_any_params_file_loads_or_raises_user_error(content, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    answered(lambda: load_params(path))


# ---------------------------------------------------------------- the chat template
@pytest.fixture(scope="module")
def tok(micro_data):
    return AutoTokenizer.from_pretrained(micro_data[1]["tokenizer"])


MARKERS = {"system": ("<|system_start|>", "<|system_end|>"), "user": ("<|user_start|>", "<|user_end|>"),
           "assistant": ("<|assistant_start|>", "<|assistant_end|>")}
text = st.lists(st.text(max_size=16) | st.sampled_from([*tokenizer.SPECIALS, "<|", "|>", "<", "|", "<<|", "\n", ""]),
                max_size=6).map("".join)
conversations = st.lists(st.fixed_dictionaries({"role": st.sampled_from(list(MARKERS)), "content": text}),
                         min_size=1, max_size=5)


@FUZZ
@given(messages=conversations, generation_prompt=st.booleans())
def test_message_text_never_becomes_a_special_token(tok, messages, generation_prompt):
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ids = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=True)["input_ids"]
    specials = set(tok.convert_tokens_to_ids(tokenizer.SPECIALS))
    expected = [tokenizer.BOS, *(s for m in messages for s in MARKERS[m["role"]])]
    expected += ["<|assistant_start|>"] * generation_prompt
    assert [i for i in ids if i in specials] == tok.convert_tokens_to_ids(expected)  # only the template's own
    if generation_prompt:  # the model is asked to speak next, as the assistant
        assert ids[-1] == tok.convert_tokens_to_ids("<|assistant_start|>")
    assert tok.decode(ids) == rendered  # nothing lost between the text and the ids
    for m in messages:  # the text itself survives, only "<|" gets the invisible joiner
        assert m["content"].replace("<|", "<\u2060|") in rendered
