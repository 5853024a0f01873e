"""Bad inputs, one test each, at the library level: the rows of docs/bad_inputs.md not tested elsewhere.

Each answer is a UserError naming the file or key and the fix (printed as one line by the stage, exit 2);
a data error inside `atomic_dir`, as the stages run it, leaves the previous output as it was.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

from gptpipe import ckpt, corpus, dist, loop, midtrain, pretrain, shards, tokenizer
from gptpipe.config import Data, Device, HFSource, deep_merge, load_params, read_yaml, validate
from gptpipe.errors import UserError, user_errors
from gptpipe.io import atomic_dir, read_jsonl
from gptpipe.model import llama_config, load_adapter, load_pretrained, save, save_adapter
from gptpipe.post import reward

from conftest import REPO, sh

CPU = Device(type="cpu", threads=None, peak_flops=1e11)


def refused(tmp_path, match: str, build) -> UserError:
    """`build(out)` inside atomic_dir, as a stage runs it, must raise a one-line UserError matching `match`
    and leave the previous output untouched."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "previous").write_text("kept")
    with pytest.raises(UserError, match=match) as e:
        with atomic_dir(out) as d:
            build(d)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    assert os.listdir(out) == ["previous"] and (out / "previous").read_text() == "kept"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "a temporary output was left"
    return e.value


# ---------------------------------------------------------------- params
def test_params_file_that_is_not_utf8(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_bytes((REPO / "params.yaml").read_bytes().replace(b"seed: 0", b"seed: 0 # caf\xe9", 1))
    with pytest.raises(UserError, match=r"params.yaml is not UTF-8 text \(byte \d+\): save it as UTF-8"):
        load_params(f)


@pytest.mark.parametrize("sets, words", [
    (["report.title=[unclosed"], "--set 'report.title=[unclosed': '[unclosed' is not a YAML value"),
    (["a=!!python/object/apply:os.system [ls]"], "is not a YAML value (could not determine a constructor"),
    (["pretrain=1", "pretrain.lr=0.1"], "an earlier --set gives 'pretrain' a value, so it has no keys"),
])
def test_set_strings_that_cannot_be_parsed(sets, words):
    with pytest.raises(UserError) as e:
        load_params(REPO / "params.yaml", sets)
    assert words in str(e.value)


@pytest.mark.parametrize("key", ["pretrain.token_ratio", "sft.epochs", "device.peak_flops"])
def test_infinite_or_nan_values(key):
    for value in (".inf", ".nan"):
        with pytest.raises(UserError, match=rf"{key}: Input should be a finite number"):
            load_params(REPO / "params.yaml", [f"{key}={value}"])


def test_regex_too_big_to_compile():
    src = {"name": None, "split": "train", "data_files": "d.jsonl", "streaming": False, "max_rows": 1, "path": "json"}
    hf = {"sft": src | {"messages_field": "m"},
          "prefs": src | {"prompt_field": None, "chosen_field": "c", "rejected_field": "r", "heldout_fraction": 0.1},
          "rl": src | {"question_field": "q", "answer_field": "a", "answer_pattern": "a{9999999999}",
                       "heldout_fraction": 0.1}}
    with pytest.raises(UserError, match=r"tasks.hf.rl: answer_pattern 'a\{9999999999\}' is not a valid regular"):
        validate(deep_merge(read_yaml(REPO / "params.yaml"), {"tasks": {"hf": hf}}))


# ---------------------------------------------------------------- data
def data(tmp_path, rows: list | None = None, **hf) -> Data:
    """data.source=hf over a local parquet file of `rows` (a `text` column), or over `hf` as given."""
    if rows is not None:
        pq.write_table(pa.table({"text": rows}), tmp_path / "docs.parquet")
        hf = {"data_files": str(tmp_path / "docs.parquet")} | hf
    return Data(source="hf", max_bytes=200_000, val_fraction=0.1, seed=0, hf=HFSource(**(
        {"path": "parquet", "name": None, "split": "train", "text_field": "text", "data_files": None,
         "streaming": True, "max_docs": None} | hf)))


def test_empty_corpus(tmp_path):
    refused(tmp_path, r"the train split is empty \(0 documents read from data.source=hf\): give more data",
            lambda out: corpus.build(data(tmp_path, ["", "  \n", None]), out))


@pytest.mark.parametrize("streaming", [True, False])
def test_non_utf8_bytes_in_a_json_file(tmp_path, streaming):
    lines = [json.dumps({"text": f"document {i} " * 20}).encode() for i in range(40)]
    lines[3] = b'{"text": "caf\xe9 latin-1, not UTF-8"}'
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    refused(tmp_path, r"data.hf: cannot read row 3 of 'json' \(UnicodeDecodeError: .*\); fix or drop the file in "
                      r"data.hf.data_files",
            lambda out: corpus.build(data(tmp_path, path="json", data_files=str(tmp_path / "docs.jsonl"),
                                          streaming=streaming), out))


def test_document_larger_than_the_whole_corpus_cap(tmp_path, capsys):
    docs = [f"document {i} " * 40 for i in range(300)]
    docs.insert(5, "é" * 150_000)  # 300 kB in one row, over data.max_bytes (200 kB)
    stats = corpus.build(data(tmp_path, docs), tmp_path)
    assert "skipped document 5: 0.3 MB is over data.max_bytes" in capsys.readouterr().out
    assert stats["train_bytes"] + stats["val_bytes"] <= 200_000 and stats["val_docs"] > 0
    assert not any("é" in t for s in ("train", "val") for t in corpus.read_texts(tmp_path / f"{s}.parquet"))


@pytest.mark.parametrize("streaming", [True, False])
def test_missing_split(tmp_path, streaming):
    e = refused(tmp_path, r"data.hf: cannot load dataset 'parquet' \(ValueError: .*split.*validation",
                lambda out: corpus.build(data(tmp_path, ["a doc " * 20] * 20, split="validation",
                                              streaming=streaming), out))
    assert "train" in str(e)  # the splits there are


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pages"])
def test_corrupt_parquet(tmp_path, damage):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 20 for i in range(100)]}), good)
    raw = bytearray(good.read_bytes())
    if damage == "garbage":
        raw = b"PAR1" + b"\x00" * 500
    elif damage == "truncated":
        raw = raw[:len(raw) // 2]
    else:  # header and footer intact, the data pages scrambled: only reading the rows finds out
        raw[100:len(raw) // 2] = bytes((b * 7 + 13) % 256 for b in raw[100:len(raw) // 2])
    (tmp_path / "bad.parquet").write_bytes(bytes(raw))
    for streaming in (True, False):
        refused(tmp_path, r"data.hf: cannot (load dataset|read row 0 of) 'parquet' \(.+\)",
                lambda out: corpus.build(data(tmp_path, data_files=str(tmp_path / "bad.parquet"),
                                              streaming=streaming), out))


def test_text_column_that_is_not_text(tmp_path):
    pq.write_table(pa.table({"text": [[1, 2], [3]]}), tmp_path / "docs.parquet")
    refused(tmp_path, r"data.hf.text_field: column 'text' holds list, not text \(row 0\); point data.hf.text_field",
            lambda out: corpus.build(data(tmp_path, data_files=str(tmp_path / "docs.parquet")), out))


@pytest.fixture
def tokens(micro_data, tmp_path):
    d = tmp_path / "tokens"
    shutil.copytree(micro_data[1]["tokens"], d)
    return d


def test_shards_of_another_tokenizer(micro_data, tokens, tmp_path, monkeypatch):
    p, dirs = micro_data
    meta = json.loads((tokens / shards.META).read_text())
    (tokens / shards.META).write_text(json.dumps(meta | {"vocab_size": 1024}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"tokenizer has 512 tokens but .*tokens was made with 1024: rerun "
                                        r"`dvc repro tokenize`"):
        pretrain.run(p, dist.setup(CPU), tokens=tokens,
                     tokenizer=dirs["tokenizer"], out=None, ckpt_root=tmp_path / "ck")


def test_val_split_shorter_than_a_window(micro_data, tiny_model, tokens, tmp_path, monkeypatch):
    """Both stages of our loop refuse it before the first step (the check is the loop's own)."""
    p, dirs = micro_data
    np.arange(10, dtype=np.uint16).tofile(tokens / "val_0000.bin")
    meta = json.loads((tokens / shards.META).read_text())
    meta["splits"]["val"]["files"] = [{"file": "val_0000.bin", "tokens": 10}]
    (tokens / shards.META).write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"pretrain: the val split has fewer than seq_len\+1 = 65 tokens: raise "
                                        r"data.val_fraction or lower pretrain.seq_len"):
        pretrain.run(p, dist.setup(CPU), tokens=tokens, tokenizer=dirs["tokenizer"], out=None, ckpt_root=tmp_path / "ck")
    (tmp_path / "sft.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(UserError, match=r"midtrain: the val split has fewer .* lower midtrain.seq_len"):
        midtrain.run(p, dist.setup(CPU), base=tiny_model, tokens=tokens, conversations=tmp_path / "sft.jsonl",
                     out=None, ckpt_root=tmp_path / "ck")
    assert not (tmp_path / "plots").exists() and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("text, words", [
    (None, "cannot read"), ("", "it is empty"), ('{"messages": []}\n{"task": "copy"}\n', "line 2 lacks one of them"),
    ('{"messages": [\n', "cannot read"),
])
def test_chat_set_missing_empty_or_malformed(tmp_path, text, words):
    f = tmp_path / "sft.jsonl"
    if text is not None:
        f.write_text(text)
    with pytest.raises(UserError, match=rf"sft.jsonl: .*{words}.*rerun `dvc repro tasks`"):
        read_jsonl(f, ("messages",), made_by="tasks")


def test_corrupt_shard_meta_and_tokenizer_files(micro_data, tokens, tmp_path):
    (tokens / shards.META).write_text('{"dtype": "uint16", "spl')  # cut short
    with pytest.raises(UserError, match=r"meta.json: cannot read \(.*\); rerun `dvc repro tokenize`"):
        shards.Shards(tokens, "train")
    tok = tmp_path / "tok"
    shutil.copytree(micro_data[1]["tokenizer"], tok)
    (tok / tokenizer.RANKS).write_text("not base64 !!! 0\n")
    with pytest.raises(UserError, match=r"tok: unreadable tokenizer \(.+\); rerun `dvc repro tokenize`"):
        tokenizer.load(tok)


# ---------------------------------------------------------------- models
def model_dir(tiny_model, tmp_path, name="model"):
    d = tmp_path / name
    shutil.copytree(tiny_model, d)
    return d


def test_missing_model_dir(tmp_path):
    with pytest.raises(UserError, match=r"nope: no config.json, so no HF model there; rerun the stage"):
        load_pretrained(tmp_path / "nope")


def test_corrupt_safetensors(tiny_model, tmp_path):
    d = model_dir(tiny_model, tmp_path)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    with pytest.raises(UserError, match=r"model: corrupt or truncated weights \(.+\); restore them \(`dvc checkout`\)"):
        load_pretrained(d)


def test_wrong_architecture(tiny_model, tmp_path):
    cls = tmp_path / "classifier"  # a reward model's dir given where a causal LM is expected
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(cls)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(cls)
    with pytest.raises(UserError, match=r"classifier holds a LlamaForSequenceClassification, not a "
                                        r"LlamaForCausalLM: 1 weights missing \(lm_head.weight, ...\)"):
        load_pretrained(cls)
    with pytest.raises(UserError, match=r"holds a LlamaForCausalLM, not a LlamaForSequenceClassification: "
                                        r"1 weights missing \(score.weight"):
        reward.load(tiny_model)  # a causal LM where a trained reward model is expected
    assert reward.load(tiny_model, fresh_head=True)[1].num_labels == 1  # what the reward stage starts from

    d = model_dir(tiny_model, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"model_type": "nosuchmodel"}))
    with pytest.raises(UserError, match=r"model: not a model gptpipe can load \(ValueError: .*nosuchmodel"):
        load_pretrained(d)
    (d / "config.json").write_text(json.dumps(cfg | {"hidden_size": cfg["hidden_size"] * 2}))
    with pytest.raises(UserError, match=r"model: not a model gptpipe can load \(RuntimeError: .*\); point at a "
                                        r"stock HF dir whose config.json matches its weights"):
        load_pretrained(d)


def test_tokenizer_of_another_model(micro_data, tiny_model, tmp_path):
    p, dirs = micro_data
    d = tmp_path / "small_vocab"
    save(LlamaForCausalLM(llama_config(p.model, 300)), AutoTokenizer.from_pretrained(dirs["tokenizer"]), d)
    with pytest.raises(UserError, match=r"small_vocab: the tokenizer has 512 tokens but the model 300 embeddings"):
        load_pretrained(d)


def test_lora_adapter_for_another_base(micro_data, tiny_model, tmp_path):
    """The adapter loads onto its own base (and equals base + adapter); onto another base it is refused,
    whether that base has the same shapes (PEFT would load it silently) or other ones."""
    from peft import LoraConfig, get_peft_model

    p, dirs = micro_data
    torch.manual_seed(1)
    peft = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                                 init_lora_weights=False))
    save_adapter(peft, tmp_path / "adapter", base=tiny_model)
    x = torch.randint(0, 500, (1, 8))
    with torch.no_grad():
        assert torch.allclose(load_adapter(tmp_path / "adapter", tiny_model)[1](x).logits, peft(x).logits, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(dirs["tokenizer"])
    save(LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size)), tok, tmp_path / "same_shapes")
    wider = p.model.model_copy(update={"width": 2 * p.model.d_model})
    save(LlamaForCausalLM(llama_config(wider, p.tokenizer.vocab_size)), tok, tmp_path / "wider")
    for other in ("same_shapes", "wider"):
        with pytest.raises(UserError, match=rf"adapter is a LoRA adapter for another base model than .*{other}"):
            load_adapter(tmp_path / "adapter", tmp_path / other)
    (tmp_path / "adapter" / "base.json").unlink()
    with pytest.raises(UserError, match=r"adapter: no readable base.json"):
        load_adapter(tmp_path / "adapter", tiny_model)


def test_base_model_of_another_vocabulary_for_midtrain(micro_data, tiny_model, tokens, tmp_path, monkeypatch):
    p, _ = micro_data
    meta = json.loads((tokens / shards.META).read_text())
    (tokens / shards.META).write_text(json.dumps(meta | {"vocab_size": 1024}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"has a 512-token vocabulary but .*tokens has 1024: rerun `dvc repro pretrain`"):
        midtrain.run(p, dist.setup(CPU), base=tiny_model, tokens=tokens, conversations=tmp_path / "sft.jsonl",
                     out=None, ckpt_root=tmp_path / "ck")


# ---------------------------------------------------------------- runs
def test_disk_full_on_checkpoint_write(micro_data, tmp_path, monkeypatch, capsys):
    p, _ = micro_data
    m = LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size))
    opt = loop.make_optimizer(m, p.pretrain, torch.device("cpu"))
    root = tmp_path / "ck"
    ckpt.save(root, 10, m, opt, {"key": "k", "history": []})

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(root / ".tmp_step_0000020" / "optim.pt"))

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(SystemExit) as e, user_errors("pretrain"):
        ckpt.save(root, 20, m, opt, {"key": "k", "history": []})
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error [pretrain]: disk full writing ") and err.endswith(
        "optim.pt: free some space and rerun; outputs left as they were before this run") and "\n" not in err
    assert [x.name for x in root.iterdir()] == ["step_0000010"]  # the last good checkpoint, and nothing half-written
    assert ckpt.load(ckpt.latest(root, "k"), m, opt, torch.device("cpu"))["step"] == 10

    with pytest.raises(PermissionError), user_errors("pretrain"):  # other OS errors keep their traceback
        raise PermissionError(errno.EACCES, "Permission denied")


def test_corrupt_checkpoint(micro_data, tmp_path):
    p, _ = micro_data
    m = LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size))
    opt = loop.make_optimizer(m, p.pretrain, torch.device("cpu"))
    step = ckpt.save(tmp_path / "ck", 10, m, opt, {"key": "k", "history": []})
    (step / "optim.pt").write_bytes((step / "optim.pt").read_bytes()[:100])
    with pytest.raises(UserError, match=r"step_0000010: unusable checkpoint \(RuntimeError: .*\); delete .* to train"):
        ckpt.load(step, m, opt, torch.device("cpu"))


@pytest.mark.parametrize("sig, inherited", [(signal.SIGINT, signal.SIG_DFL), (signal.SIGINT, signal.SIG_IGN),
                                             (signal.SIGTERM, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_IGN)])
def test_signal_mid_stage(tmp_path, sig, inherited):
    """A real Ctrl-C or SIGTERM while an output is half written: exit 128 + signal, one line, the previous
    output kept, no temporary dir left; also when the parent started the child with the signal ignored
    (what a shell's background job does to SIGINT)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "w").write_text("previous")
    code = ("import os, signal, time\nfrom gptpipe.errors import user_errors\nfrom gptpipe.io import atomic_dir\n"
            "with user_errors('pretrain'), atomic_dir('out') as d:\n"
            f"    (d / 'w').write_text('half')\n    os.kill(os.getpid(), {int(sig)})\n    time.sleep(30)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(sig, inherited))
    assert r.returncode == 128 + sig
    assert r.stderr.strip() == "interrupted [pretrain]: outputs left as they were before this run"
    assert sorted(os.listdir(tmp_path)) == ["out"] and (tmp_path / "out" / "w").read_text() == "previous"


def test_two_dvc_repro_at_once(tmp_path):
    """DVC's own lock refuses the second `dvc repro` while the first runs; the first finishes untouched."""
    ws = tmp_path / "ws"
    ws.mkdir()
    sh(["git", "init", "-q"], ws)
    sh(["dvc", "init", "-q"], ws)
    (ws / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python -c \"import time; open('started', 'w');"
                                 " time.sleep(6); open('out', 'w').write('done')\"\n    outs: [out]\n")
    first = subprocess.Popen(["dvc", "repro"], cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (ws / "started").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    second = sh(["dvc", "repro"], ws, check=False)
    assert first.wait(120) == 0, first.stdout.read()
    said = (second.stdout + second.stderr).strip()
    assert second.returncode != 0 and said.startswith("ERROR: failed to reproduce 'slow': ")
    assert "out' is busy, it is being blocked by" in said and "dvc repro" in said and "rwlock" in said
    assert (ws / "out").read_text() == "done" and "slow" in (ws / "dvc.lock").read_text()
