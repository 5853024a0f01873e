"""GGUF export, checked in a real llama.cpp (llama-cpp-python) against transformers on the same ids."""

import pytest
import torch
from gguf import GGUFReader
from transformers import AutoTokenizer, LlamaForCausalLM

from gptpipe import gguf as g
from gptpipe.model import llama_config, load_pretrained, save

# Only 1- and 2-digit numbers: llama.cpp's "llama-bpe" splitter groups up to 3 digits (see gptpipe/gguf.py).
TEXT = "".join(f"def add_{i}(x):\n    return x + {i}  # adds {i}\n\n" for i in range(40))
PROMPT = "def add_7(x):\n    return"
# Largest last-position logit difference over the largest logit, per ftype: f32 is off only by
# llama.cpp's f16 KV cache; q8_0 rounds every weight (and activation) to 8 bits per 32-value block.
REL_TOL = {"f32": 1e-3, "f16": 5e-3, "q8_0": 5e-2}


def make_model(micro_data, out, tied=False, train_steps=0):
    """A micro-profile Llama (width 64, GQA, rows in whole 32-value blocks) with the real tokenizer.

    Trained, it memorizes TEXT, so most greedy steps have clear margins and comparing them means something;
    random-init logits are too flat for that. Past the memorized part come ties (margins of 1e-4 in one
    thread's training), which `gguf.check` tells apart.
    """
    p, dirs = micro_data
    tok = AutoTokenizer.from_pretrained(dirs["tokenizer"])
    cfg = llama_config(p.model, len(tok))
    cfg.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = tok(TEXT)["input_ids"]
    n = p.model.max_seq_len
    x = torch.tensor([ids[i:i + n] for i in range(0, len(ids) - n, n // 2)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    save(model, tok, out)
    return out


@pytest.fixture(scope="module")
def trained(micro_data, tmp_path_factory):
    return make_model(micro_data, tmp_path_factory.mktemp("trained"), train_steps=60)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {ft: g.write(trained, out / f"model-{ft}.gguf", ft) for ft in g.FTYPES}


def reference(model_dir, n_new):
    return g.reference(*load_pretrained(model_dir, dtype=torch.float32), PROMPT, n_new)


@pytest.fixture(scope="module")
def ref(trained):
    return reference(trained, 16)


@pytest.mark.parametrize("ftype", list(g.FTYPES))
def test_llama_cpp_matches_transformers(ref, exported, ftype):
    r = g.check(exported[ftype], ref)
    assert r["logit_scale"] > 5, "the trained model should be confident"
    assert r["rel_diff"] < REL_TOL[ftype], r
    assert r["greedy_agree"], r
    assert r["tokenization_equal"], r


def test_greedy_tokens_may_part_ways_only_at_a_tie(ref, exported):
    """Where transformers' top two are within llama.cpp's logit error either token is right; elsewhere not."""
    other = dict(ref, greedy=[ref["greedy"][0] + 1, *ref["greedy"][1:]])  # transformers "said" another first token
    assert ref["margins"][0] > 1 and g.check(exported["f32"], other)["greedy_agree"] is False
    tie = dict(other, margins=[0.0, *ref["margins"][1:]])
    assert g.check(exported["f32"], tie)["greedy_agree"] is True


def test_tied_embeddings(micro_data, tmp_path):
    """No output tensor in the file: llama.cpp projects with token_embd."""
    model = make_model(micro_data, tmp_path / "tied", tied=True)
    path = g.write(model, tmp_path / "tied.gguf", "f32")
    assert "output.weight" not in {t.name for t in GGUFReader(path).tensors}
    r = g.check(path, reference(model, 4))
    assert r["rel_diff"] < REL_TOL["f32"], r


def test_tokenizer_and_metadata(micro_data, trained, exported):
    from llama_cpp import Llama

    tok = AutoTokenizer.from_pretrained(trained)
    llm = Llama(str(exported["f32"]), vocab_only=True, verbose=False)
    chat = tok.apply_chat_template([{"role": "user", "content": "Is 42 > 7?"},
                                    {"role": "assistant", "content": "yes"}], tokenize=False)
    for text in [TEXT, chat, "héllo wörld 日本語 🙂\r\n\t\n  x  ", "I'LL don't WE'RE 12 34"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text

    r = GGUFReader(exported["q8_0"])
    template = r.fields["tokenizer.chat_template"].contents()  # without the training-only {% generation %}
    assert template == g.GENERATION_TAG.sub("", tok.chat_template) and "{% generation" not in template
    assert r.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    assert r.fields["tokenizer.ggml.bos_token_id"].contents() == tok.bos_token_id
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert {types[i] for i in tok.all_special_ids} == {3}  # CONTROL
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["blk.0.ffn_down.weight"] == "Q8_0"


def test_the_export_stage_without_dvc(micro_data, trained, tmp_path, monkeypatch):
    """export.run on its own: the HF dir and each GGUF checked by its client, the model card with the recipe of
    the stages the model came from, the report file; a failed check fails the stage."""
    import json
    import shutil

    from conftest import REPO

    from gptpipe import export
    from gptpipe.dist import Proc
    from gptpipe.errors import UserError

    p, _ = micro_data
    monkeypatch.chdir(tmp_path)
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/rl.json").write_text(json.dumps({"rows": [{"model": "rl", "task": "tasks", "metric": "accuracy",
                                                                  "value": 0.5, "n": 10, "stderr": 0.1}]}))
    quant = {"scheme": "int8", "bytes_before": 4e6, "bytes_after": 1e6, "tokens_per_s_before": 9.0,
             "tokens_per_s_after": 8.0, "device": "cpu"}
    (tmp_path / "quantize.json").write_text(json.dumps(quant))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/eval.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "def "}]}) + "\n")
    p = p.model_copy(update={"export": p.export.model_copy(update={"model": "rl", "gguf": ["f32"]})})
    out = tmp_path / "export"
    out.mkdir()
    kw = dict(source=trained, evals=tmp_path / "eval", quantize=tmp_path / "quantize.json", tasks=tmp_path / "tasks")
    m = export.run(p, Proc(0, 1, 0, torch.device("cpu")), out=out, report=tmp_path / "export.json", **kw)
    assert m["checks_passed"] == m["checks"] == 2
    card = (out / "README.md").read_text()
    assert "rl:" in card and "dpo:" in card and "evaluate:" not in card, "the recipe: the params of its stages"
    written = json.loads((tmp_path / "export.json").read_text())
    assert {f["path"] for f in written["files"]} >= {"export/hf/model.safetensors", "export/gguf/model-f32.gguf"}

    monkeypatch.setattr(export, "check_hf", lambda *a: {"artifact": "hf", "check": "chat", "passed": False,
                                                         "detail": "differs"})
    shutil.rmtree(out)
    out.mkdir()
    with pytest.raises(UserError, match="export checks failed for hf"):
        export.run(p, Proc(0, 1, 0, torch.device("cpu")), out=out, report=tmp_path / "again.json", **kw)
    assert not (tmp_path / "again.json").exists()
