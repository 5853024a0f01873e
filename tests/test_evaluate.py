"""Bits-per-byte, the unigram baseline and KV-cached sampling on a real (tiny) saved model."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from gptpipe import evaluate, tokenizer
from gptpipe.model import llama_config
from gptpipe.shards import Shards


@pytest.fixture(scope="module")
def saved(micro_data, tmp_path_factory):
    p, dirs = micro_data
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size))
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(dirs["tokenizer"]).save_pretrained(out)
    return p, dirs, out


def test_bpb_of_a_uniform_model(micro_data):
    """A model that predicts uniformly scores exactly log2(V) bits per target token."""
    p, dirs = micro_data
    val = Shards(dirs["tokens"], "val")
    tb = torch.tensor(tokenizer.token_bytes(tokenizer.load(dirs["tokenizer"])))
    model = LlamaForCausalLM(llama_config(p.model, val.vocab_size))
    torch.nn.init.zeros_(model.lm_head.weight)
    bpb, nbytes, per_window = evaluate.bpb_model(model, val, tb, p.evaluate, "cpu")
    windows = list(val.windows(p.model.max_seq_len, p.evaluate.tokens))
    y = torch.cat([w[1:] for w in windows])
    counted = (tb[y] > 0).sum().item()
    assert nbytes == tb[y].sum().item() and len(per_window) == len(windows)
    assert sum(b for _, b in per_window) == nbytes  # per window: (nats, bytes), for paired comparisons
    assert bpb == pytest.approx(counted * math.log2(val.vocab_size) / nbytes, rel=1e-5)


def test_unigram_baseline_matches_its_definition(micro_data):
    p, dirs = micro_data
    train, val = Shards(dirs["tokens"], "train"), Shards(dirs["tokens"], "val")
    tb = torch.tensor(tokenizer.token_bytes(tokenizer.load(dirs["tokenizer"])))
    got, per_window = evaluate.bpb_unigram(train, val, tb, 64, 4096)
    assert len(per_window) == len(list(val.windows(64, 4096)))
    counts = np.bincount(np.concatenate(train.arrays), minlength=train.vocab_size) + 1
    logp = np.log(counts / counts.sum())
    y = torch.cat([w[1:] for w in val.windows(64, 4096)]).numpy()
    keep = tb.numpy()[y] > 0
    assert got == pytest.approx(-logp[y][keep].sum() / tb.numpy()[y].sum() / math.log(2), rel=1e-9)


def test_evaluate_model_rows_and_samples(saved):
    p, dirs, out = saved
    e = p.evaluate.model_copy(update={"prompts": ["def ", "<script>"], "max_new_tokens": 5, "choice_items": 8})
    held = [{"task": "copy", "prompt": [{"role": "user", "content": f"Repeat after me:\n{w}"}], "answer": w}
            for w in ("club", "deal", "gold", "milk", "rain")]
    pairs = [{"prompt": held[0]["prompt"], "chosen": [], "rejected": [{"role": "assistant", "content": "bank"}]}]
    s = evaluate.suite(e, dirs["tokens"], dirs["tokenizer"], held, pairs)
    r = evaluate.evaluate_model("base", out, s, "cpu", unigram=True)
    rows = {(row["model"], row["task"], row["metric"]): row for row in r["rows"]}
    assert set(rows) == {("base", "val", "bpb"), ("unigram", "val", "bpb"), ("base", "copy", "accuracy"),
                         ("base", "tasks", "accuracy"), ("base", "copy", "mc_accuracy"),
                         ("base", "tasks", "mc_accuracy"), ("base", "cloze", "mc_accuracy")}
    assert rows[("base", "copy", "mc_accuracy")]["n"] == 5 and rows[("base", "cloze", "mc_accuracy")]["n"] == 8
    assert [s["prompt"] for s in r["samples"]][:2] == ["def ", "<script>"]
    assert len(r["items"]["tasks"]) == 5 and len(r["items"]["cloze"]) == 8 and r["items"]["unigram_val"]
    again = evaluate.evaluate_model("base", out, s, "cpu", unigram=True)
    assert again["samples"] == r["samples"], "sampling is seeded"


def test_the_evaluate_stage_without_dvc(micro_data, tiny_model, tmp_path, monkeypatch):
    """evaluate.run on its own: every model scored into out/, the overall figures into scores/, and each
    stage's effect against the model it starts from."""
    import json
    import shutil

    from gptpipe import tasks
    from gptpipe.dist import Proc
    from gptpipe.post import reward

    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    for m in ("base", "sft", "dpo"):
        shutil.copytree(tiny_model, tmp_path / "models" / m)
    for part in reward.load(tiny_model, fresh_head=True):
        part.save_pretrained(tmp_path / "models/reward")
    sets = tasks.build(["copy", "compare"], 4, 6, 0.2, 0.0, seed=0)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "pairs").mkdir()
    for name, path in (("eval", "tasks/eval.jsonl"), ("prefs_heldout", "tasks/prefs_heldout.jsonl"),
                       ("prefs_heldout", "pairs/heldout.jsonl")):
        (tmp_path / path).write_text("".join(json.dumps(r) + "\n" for r in sets[name]))
    p = p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"choice_items": 8}),
                             "export": p.export.model_copy(update={"model": "dpo"})})
    models = {"base": ("pretrain", None), "sft": ("sft", "base"), "reward": ("reward", "sft"), "dpo": ("dpo", "sft")}
    out, scores = tmp_path / "eval", tmp_path / "scores"
    out.mkdir(), scores.mkdir()
    m = evaluate.run(p, Proc(0, 1, 0, torch.device("cpu")), tokens=dirs["tokens"], tokenizer=dirs["tokenizer"],
                     tasks=tmp_path / "tasks", pairs=tmp_path / "pairs", out=out, effects_json=tmp_path / "effects.json",
                     scores=scores, models=models)
    assert sorted(f.stem for f in out.glob("*.json")) == ["base", "dpo", "reward", "sft"]
    figures = {f.stem: json.loads(f.read_text()) for f in scores.glob("*.json")}
    assert set(figures) == {"unigram", "base", "sft", "dpo", "reward"}
    assert set(figures["dpo"]) == {"val_bpb", "tasks_accuracy", "tasks_mc_accuracy", "cloze_mc_accuracy"}
    assert m["questions"] == 12 and m["final_tasks_accuracy"] == figures["dpo"]["tasks_accuracy"]
    effects = {(e["stage"], e["metric"]): e for e in json.loads((tmp_path / "effects.json").read_text())["rows"]}
    assert effects["dpo", "tasks/accuracy"]["before_model"] == "sft" and effects["dpo", "tasks/accuracy"]["diff"] == 0
    assert effects["sft", "val/bpb"]["before_model"] == "base" and ("reward", "prefs/pairwise_accuracy") in effects
