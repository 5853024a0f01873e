"""The BPE: tiktoken and the HF tokenizer give the same ids on any text; chat template; bytes."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from gptpipe import tokenizer
from gptpipe.errors import UserError


@pytest.fixture(scope="module")
def both(micro_data):
    _, dirs = micro_data
    return tokenizer.load(dirs["tokenizer"]), AutoTokenizer.from_pretrained(dirs["tokenizer"])


# Text the BPE meets in practice plus what breaks naive ports: whitespace runs, digits, contractions,
# non-Latin scripts, emoji, control characters and the special-token strings themselves.
pieces = st.sampled_from(["  ", "\n\n", "\t", " \n ", "'s", "'LL", "123456", "def ", "é", "ß", "日本語",
                          "😀", "\r\n", "\x00", "<|bos|>", "<|user_start|>", "    return x", "a.b(c)"])
texts = st.lists(st.one_of(st.text(max_size=30), pieces), max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_tiktoken_and_hf_agree(both, text):
    enc, hf = both
    ids = enc.encode(text, allowed_special="all")
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == enc.decode(ids)


def test_agree_on_the_corpus(both, micro_data):
    from gptpipe.corpus import read_texts

    enc, hf = both
    for text in read_texts(micro_data[1]["corpus"] / "val.parquet"):
        assert hf.encode(text, add_special_tokens=False) == enc.encode_ordinary(text)


def test_vocab_and_specials(both, micro_data):
    enc, hf = both
    p, _ = micro_data
    assert enc.n_vocab == len(hf) == p.tokenizer.vocab_size
    for s in tokenizer.SPECIALS:
        assert hf.convert_tokens_to_ids(s) == enc._special_tokens[s]
    assert hf.bos_token == tokenizer.BOS and hf.eos_token == tokenizer.EOS and hf.pad_token == tokenizer.PAD


def test_chat_template_marks_assistant_tokens(both):
    _, hf = both
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    text = hf.apply_chat_template(chat, tokenize=False)
    assert text == ("<|bos|><|system_start|>be brief<|system_end|><|user_start|>2+2?<|user_end|>"
                    "<|assistant_start|>4<|assistant_end|>")
    prompt = hf.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user_end|><|assistant_start|>")
    out = hf.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert hf.decode(masked) == "4<|assistant_end|>"


def test_token_bytes(both):
    enc, _ = both
    tb = tokenizer.token_bytes(enc)
    assert tb[enc._special_tokens["<|bos|>"]] == 0
    assert tb[ord("a")] == 1 and sum(tb) > enc.n_vocab


def test_load_refuses_other_vocab(micro_data, tmp_path):
    import json
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(micro_data[1]["tokenizer"], d)
    meta = json.loads((d / tokenizer.META).read_text())
    (d / tokenizer.META).write_text(json.dumps(meta | {"vocab_size": 999}))
    with pytest.raises(UserError, match="rerun `dvc repro tokenize`"):
        tokenizer.load(d)
