"""Model sizing from depth, parameter and FLOP counts, and the stock HF format."""

import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from gptpipe.config import Model
from gptpipe.model import count_params, flops_per_token, llama_config, swiglu_hidden


def shape(**kw):
    return Model(**({"depth": 4, "aspect_ratio": 32, "head_dim": 32, "kv_group": 2, "max_seq_len": 64,
                     "width": None, "n_head": None, "n_kv_head": None} | kw))


def test_counts_match_the_real_model():
    for m in (shape(), shape(depth=6, aspect_ratio=64, head_dim=64, kv_group=1)):
        cfg = llama_config(m, 1000)
        model = LlamaForCausalLM(cfg)
        assert count_params(cfg)["total"] == sum(p.numel() for p in model.parameters())


def test_flops_per_token_formula():
    cfg = llama_config(shape(), 1000)
    n = count_params(cfg)["non_embedding"]
    assert flops_per_token(cfg, 64) == 6 * n + 12 * 4 * 4 * 32 * 64
    assert swiglu_hidden(128) == 352 and swiglu_hidden(768) == 2048


def test_saves_and_loads_as_stock_llama(tmp_path):
    model = LlamaForCausalLM(llama_config(shape(), 1000))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.randint(0, 1000, (1, 10))
    torch.testing.assert_close(model(x).logits, again(x).logits)
    assert type(again).__name__ == "LlamaForCausalLM" and again.config.num_key_value_heads == 2


def test_a_saved_model_dir_has_the_same_bytes_online_or_offline(tiny_model, tmp_path):
    """transformers saves local_files_only with the tokenizer, and HF_HUB_OFFLINE set it: a `dvc repro` from a shell
    without the README's environment wrote other bytes and reran midtrain and all after it."""
    code = "import sys; from gptpipe.model import load_pretrained, save; save(*reversed(load_pretrained(sys.argv[1])), sys.argv[2])"
    for offline in ("0", "1"):
        subprocess.run([sys.executable, "-c", code, str(tiny_model), str(tmp_path / offline)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": offline, "TRANSFORMERS_OFFLINE": offline})
    for f in ("tokenizer_config.json", "config.json", "model.safetensors"):
        assert (tmp_path / "0" / f).read_bytes() == (tmp_path / "1" / f).read_bytes(), f
