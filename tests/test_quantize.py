"""Quantize: int8 weight-only with torchao, saved as safetensors and loaded back by stock transformers."""

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from gptpipe import quantize
from gptpipe.dist import Proc
from gptpipe.errors import UserError


@pytest.fixture(scope="module")
def model_dir(micro_data, tiny_model):
    return micro_data[0], tiny_model


def test_int8_shrinks_reloads_without_pickle_and_stays_close(model_dir, tmp_path):
    p, src = model_dir
    q = p.quantize.model_copy(update={"bench_tokens": 4})
    m = quantize.run(p.model_copy(update={"quantize": q}), Proc(0, 1, 0, torch.device("cpu")), source=src, out=tmp_path)
    assert m["bytes_after"] < 0.8 * m["bytes_before"]
    assert m["tokens_per_s_before"] > 0 and m["tokens_per_s_after"] > 0
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt")), "weights only as safetensors"
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() is not None  # torchao's tensor layout as JSON, not a pickle
    ref = AutoModelForCausalLM.from_pretrained(src)
    got = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert "Int8" in type(got.model.layers[0].mlp.up_proj.weight).__name__
    x = torch.randint(0, p.tokenizer.vocab_size, (2, 16))
    with torch.no_grad():
        a, b = ref(x).logits, got(x).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_same_weights_give_the_same_bytes(model_dir, tmp_path):
    """safetensors orders the metadata differently on each save; quantize sorts it, so a rerun changes nothing."""
    p, src = model_dir
    p = p.model_copy(update={"quantize": p.quantize.model_copy(update={"bench_tokens": 2})})
    files = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        quantize.run(p, Proc(0, 1, 0, torch.device("cpu")), source=src, out=tmp_path / name)
        files.append((tmp_path / name / "model.safetensors").read_bytes())
    assert files[0] == files[1]
    with safe_open(tmp_path / "a" / "model.safetensors", "pt") as f:
        assert len(f.metadata()) > 2  # torchao's entry per tensor: the case whose order varied


def test_int4_on_cpu_is_refused_before_work(model_dir):
    p, _ = model_dir
    with pytest.raises(UserError, match="quantize.scheme.*CUDA"):
        quantize.config(p.quantize.model_copy(update={"scheme": "int4"}), torch.device("cpu"))
