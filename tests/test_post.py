"""Midtraining and SFT on a real tiny model: the chat stream, assistant-only labels, learning, accuracy."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from gptpipe import dist, evaluate, midtrain, tasks
from gptpipe.config import Device
from gptpipe.model import llama_config, save
from gptpipe.post import sft

CPU = Device(type="cpu", threads=None, peak_flops=1e11)


@pytest.fixture(scope="module")
def base(micro_data, tmp_path_factory):
    p, dirs = micro_data
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base")
    save(LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size)), AutoTokenizer.from_pretrained(dirs["tokenizer"]), out)
    return out


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    sets = tasks.build(["copy"], 40, 10, 0.2, 0.0, seed=0)
    d = tmp_path_factory.mktemp("tasks")
    for name, rows in sets.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_chat_stream_renders_every_conversation(base, chat):
    tok = AutoTokenizer.from_pretrained(base)
    rows = midtrain.read_jsonl(chat / "sft.jsonl")
    stream = midtrain.chat_stream(tok, rows)
    assert (stream == tok.bos_token_id).sum() == len(rows)
    assert tok.decode(stream[:30]).startswith("<|bos|><|user_start|>Repeat the word: ")


def test_midtrain_mixes_chat_into_the_loop(micro_data, base, chat, tmp_path, monkeypatch):
    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    m = midtrain.run(p, dist.setup(CPU), base=base, tokens=dirs["tokens"], conversations=chat / "sft.jsonl",
                     out=tmp_path, ckpt_root=tmp_path / "ck")
    assert m["steps"] == p.midtrain.tokens // p.midtrain.total_batch_tokens and m["chat_tokens"] > 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "llama"


def test_sft_labels_only_the_assistant_reply(micro_data, base, chat, tmp_path):
    p, _ = micro_data
    trainer = sft.make_trainer(p.sft, p.wandb, policy=base, conversations=chat / "sft.jsonl", scratch=str(tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        reply = tok.decode(ids[labels != -100])
        prompt = tok.decode(ids[ids != tok.pad_token_id])
        word = prompt.split("Repeat the word: ")[1].split("<|user_end|>")[0]
        assert reply == f"{word}<|assistant_end|>"


def test_sft_learns_and_is_scored_by_exact_match(micro_data, base, chat, tmp_path, monkeypatch):
    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    s = p.sft.model_copy(update={"epochs": 30, "lr": 0.01, "batch_size": 8})
    m = sft.train(s, p.wandb, policy=base, conversations=chat / "sft.jsonl", out=tmp_path / "sft")
    assert m["train_loss"] < 3 and (tmp_path / "plots/sft.csv").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    tok = AutoTokenizer.from_pretrained(tmp_path / "sft")
    train_rows = [{"task": "copy", "prompt": r["prompt"], "answer": r["answer"]}
                  for r in midtrain.read_jsonl(chat / "rl.jsonl")]
    rows, samples = evaluate.task_accuracy(model, tok, train_rows, "cpu", "sft")
    before, _ = evaluate.task_accuracy(AutoModelForCausalLM.from_pretrained(base), tok, train_rows, "cpu", "base")
    after = {r["task"]: r for r in rows}
    assert after["tasks"]["n"] == len(train_rows) and after["copy"]["stderr"] is not None
    assert before[-1]["value"] == 0 and after["copy"]["value"] >= 0.25  # it learned to copy
    assert samples[0]["model"] == "sft"
