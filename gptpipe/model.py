"""The model: a stock HF `LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU, GQA), sized from depth.

Width = depth * aspect_ratio, heads = width / head_dim, kv heads = heads / kv_group (nanochat's rule),
each overridable in params. Stock architecture, so transformers, TRL, PEFT and llama.cpp take it as is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from transformers import LlamaConfig

from gptpipe.config import Model
from gptpipe.dist import bf16
from gptpipe.errors import UserError, cause
from gptpipe.io import digest


def llama_config(m: Model, vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.d_model,
        intermediate_size=swiglu_hidden(m.d_model),
        num_hidden_layers=m.depth,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        max_position_embeddings=m.max_seq_len,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.02,
        attn_implementation="sdpa",
    )


def swiglu_hidden(width: int, multiple: int = 32) -> int:
    """8/3 * width (same parameters as a 4x MLP with three matrices), rounded up."""
    return multiple * math.ceil(8 * width / 3 / multiple)


def count_params(cfg: LlamaConfig) -> dict[str, int]:
    """Parameter counts from the config alone (no model needed), for the planner and the logs."""
    d, L, V, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    attn = d * (cfg.num_attention_heads * hd) * 2 + d * (cfg.num_key_value_heads * hd) * 2
    block = attn + 3 * d * f + 2 * d
    embed = V * d
    total = embed + L * block + d + (0 if cfg.tie_word_embeddings else V * d)
    return {"total": total, "embedding": embed, "non_embedding": total - embed}


def flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter (forward + backward) plus attention scores.

    The embedding lookup is not a matmul, so it is left out; the lm_head is one. Attention adds
    12 * layers * heads * head_dim * seq_len (QK^T and AV, forward and backward), as in nanochat.
    """
    n = count_params(cfg)
    hd = cfg.hidden_size // cfg.num_attention_heads
    return 6 * n["non_embedding"] + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * hd * seq_len


FP32_ATTENTION = "sdpa_fp32"


def fp32_attention(model, dtype: str, device_type: str) -> str:
    """Where training runs under bf16 autocast on a CPU (`dist.bf16`), run the model's attention as the stock SDPA
    with autocast off and q, k, v in fp32; return the attention it had, to give back with
    `model.set_attn_implementation`. Inside a CPU bf16 autocast the matmuls ran 5-7x faster on AMX here, but bf16
    attention's backward at half fp32's speed. The saved config.json still says sdpa."""
    had = model.config._attn_implementation
    if device_type != "cpu" or not bf16(dtype, device_type):
        return had
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
        with torch.autocast(query.device.type, enabled=False):
            return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)

    AttentionInterface.register(FP32_ATTENTION, sdpa_fp32)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)
    model.set_attn_implementation(FP32_ATTENTION)
    return had


def save(model, tok, out) -> None:
    """An HF directory any stock loader takes: safetensors weights, config, generation config, tokenizer."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def weights_digest(path) -> str:
    """sha256 of a model dir's safetensors files: which base an adapter was trained on, whatever its path."""
    return digest(path, pattern="*.safetensors")


BASE = "base.json"  # in an adapter dir: the digest of the weights it was trained on


def save_adapter(peft_model, out, base) -> None:
    """A PEFT adapter dir, plus base.json naming the weights (of the model dir `base`) it was trained on."""
    peft_model.save_pretrained(out)
    (Path(out) / BASE).write_text(json.dumps({"path": str(base), "weights_sha256": weights_digest(base)}))


def load_adapter(adapter, base):
    """(tokenizer, model): the LoRA adapter in `adapter` applied to the model in `base` and merged.

    An adapter for another base is refused in one line: PEFT would load one of the same shapes silently
    (the digest in base.json catches it) and fail deep inside on other shapes. Its weights are read from
    safetensors here; PEFT's own loader would fall back to a pickled adapter_model.bin.
    """
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter, base = Path(adapter), Path(base)
    weights = adapter / "adapter_model.safetensors"
    if not (adapter / "adapter_config.json").is_file() or not weights.is_file():
        raise UserError(f"{adapter}: no adapter_config.json and adapter_model.safetensors, so no PEFT adapter "
                        "there; rerun `dvc repro lora`")
    try:
        trained_on = json.loads((adapter / BASE).read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{adapter}: no readable {BASE} saying which base it was trained on; rerun `dvc repro lora`") from None
    if trained_on != weights_digest(base):
        raise UserError(f"{adapter} is a LoRA adapter for another base model than {base} (weights differ); "
                        f"apply it to the model it was trained on, or rerun `dvc repro lora`")
    tok, model = load_pretrained(base, dtype=torch.float32)
    try:
        peft = get_peft_model(model, PeftConfig.from_pretrained(adapter))
        unused = set_peft_model_state_dict(peft, load_file(weights)).unexpected_keys
        if unused:  # weights for modules this base does not have: they would be dropped silently
            raise ValueError(f"{len(unused)} adapter weights fit no module, e.g. {unused[0]}")
        model = peft.merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{adapter}: does not fit {base} ({cause(e)}); rerun `dvc repro lora`") from None
    return tok, model


def load_pretrained(path, auto=None, new_head: str | None = None, **kw):
    """(tokenizer, model) of an HF dir; every stage reads model dirs through here.

    What would be unsafe or silently wrong is refused with a one-line UserError: weights that are not
    safetensors (a pytorch_model.bin is a pickle, and unpickling can run code), remote code, weights missing
    for the class asked for (transformers would warn and go on with random layers; `new_head` names a head
    that is meant to start fresh, e.g. a reward model's "score."), and a tokenizer larger than the
    embedding (generation would index past it). `auto` defaults to AutoModelForCausalLM.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json, so no HF model there; rerun the stage that makes it (`dvc repro`)")
    if not any(path.glob("*.safetensors")):
        pickled = " (only a pytorch_model.bin: a pickle, which gptpipe never loads)" if any(path.glob("*.bin")) else ""
        raise UserError(f"{path}: no model.safetensors{pickled}; save the model with save_pretrained() (safetensors)")
    auto = auto or AutoModelForCausalLM
    try:
        # local_files_only: a model dir is never looked up on the hub, and the flag is saved with the tokenizer,
        # so leaving it to HF_HUB_OFFLINE made a stage's bytes depend on the shell it ran from
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        model, info = auto.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                           output_loading_info=True, **kw)
    except SafetensorError as e:
        raise UserError(f"{path}: corrupt or truncated weights ({e}); restore them (`dvc checkout`) or rerun "
                        "the stage that makes them") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: shapes unlike config.json's
        raise UserError(f"{path}: not a model gptpipe can load ({cause(e)}); point at a stock HF "
                        "dir whose config.json matches its weights") from None
    missing = sorted(k for k in info["missing_keys"] if not (new_head and k.startswith(new_head)))
    if missing:
        raise UserError(f"{path} holds a {'/'.join(model.config.architectures or ['?'])}, not a "
                        f"{type(model).__name__}: {len(missing)} weights missing ({missing[0]}, ...); "
                        "point at the right model directory")
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise UserError(f"{path}: the tokenizer has {len(tok)} tokens but the model {rows} embeddings, so the "
                        "tokenizer files belong to another model; rerun the stage that makes this dir")
    return tok, model
