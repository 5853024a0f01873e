"""Multiple-choice eval: the questions are fair and the log-likelihoods are the model's, padding or not."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from gptpipe import choice
from gptpipe.model import llama_config


@pytest.fixture(scope="module")
def tok_model(micro_data):
    p, dirs = micro_data
    torch.manual_seed(0)
    return AutoTokenizer.from_pretrained(dirs["tokenizer"]), LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size))


def rows(task, answers):
    return [{"task": task, "prompt": [{"role": "user", "content": f"Q{i}"}], "answer": a} for i, a in enumerate(answers)]


def test_chat_items_hold_the_answer_once_and_the_plausible_wrong_one(tok_model):
    tok, _ = tok_model
    held = rows("add", ["1", "17", "5", "9", "12"])
    items = choice.chat_items(tok, held, {"Q0": "2"}, n=5, choices=4, seed=0)
    assert len(items) == 5
    for it, r in zip(items, held):
        texts = [tok.decode(o) for o in it["options"]]
        assert texts[it["label"]] == r["answer"] + tok.eos_token
        assert len(set(texts)) == 4 and all(t.endswith(tok.eos_token) for t in texts)
    assert "2" + tok.eos_token in [tok.decode(o) for o in items[0]["options"]]
    assert tok.decode(items[0]["context"]).endswith("<|assistant_start|>")
    assert choice.chat_items(tok, rows("copy", ["a", "b"]), {}, 5, 4, 0) == [], "too few answers: no question"


def test_cloze_label_is_the_real_continuation():
    text = np.arange(10_000) % 997
    items = choice.cloze_items([text], n=20, choices=4, context=8, continuation=4, seed=1)
    for it in items:
        right = it["options"][it["label"]]
        start = it["context"][-1] + 1
        assert right == [(start + i) % 997 for i in range(4)]
    assert {it["label"] for it in items} == {0, 1, 2, 3}


def test_logliks_are_the_models_and_padding_changes_nothing(tok_model):
    _, model = tok_model
    pairs = [([5, 6, 7], [8, 9]), ([5, 6, 7, 10, 11, 12], [13]), ([1, 2], [3, 4, 5, 6])]
    batched = choice.logliks(model, pairs, "cpu", batch=3, pad=0)
    for (c, k), got in zip(pairs, batched):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c + k])).logits[0], -1)
        want = sum(logp[len(c) - 1 + i, t].item() for i, t in enumerate(k))
        assert got == pytest.approx(want, abs=1e-4)


def test_hits_pick_the_most_likely_option(tok_model):
    _, model = tok_model
    ctx = [5, 6, 7]
    opts = [[t] for t in range(10, 14)]
    scores = choice.logliks(model, [(ctx, o) for o in opts], "cpu", 4, 0)
    best = int(np.argmax(scores))
    got = choice.hits(model, [{"task": "t", "context": ctx, "options": opts, "label": best},
                              {"task": "t", "context": ctx, "options": opts, "label": (best + 1) % 4}], "cpu", 8, 0)
    assert got == {"t": [True, False]}
