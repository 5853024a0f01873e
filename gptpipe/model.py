"""The model: a stock HF `LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU, GQA), sized from depth.

Width = depth * aspect_ratio, heads = width / head_dim, kv heads = heads / kv_group (nanochat's rule),
each overridable in params. Stock architecture, so transformers, TRL, PEFT and llama.cpp take it as is.
"""

from __future__ import annotations

import math
from pathlib import Path

from transformers import LlamaConfig

from gptpipe.config import Model
from gptpipe.errors import UserError


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


def save(model, tok, out) -> None:
    """An HF directory any stock loader takes: safetensors weights, config, generation config, tokenizer."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)


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
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model, info = auto.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                           output_loading_info=True, **kw)
    except SafetensorError as e:
        raise UserError(f"{path}: corrupt or truncated weights ({e}); restore them (`dvc checkout`) or rerun "
                        "the stage that makes them") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: shapes unlike config.json's
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: not a model gptpipe can load ({type(e).__name__}: {why}); point at a stock HF "
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
