"""GGUF export: an HF `LlamaForCausalLM` dir as one file that llama.cpp (and Ollama, LM Studio...) runs.

Written from the GGUF format's documented meaning with the `gguf` package's writer: the llama.*
hyperparameters, the tensors under llama.cpp's names, and the tokenizer as a byte-level BPE ("gpt2").

llama.cpp does not read a pre-tokenizer regex from the file: it picks one of its built-in splitters by
the name in `tokenizer.ggml.pre`. The closest to ours (tokenizer.PATTERN) is "llama-bpe", Llama 3's
GPT-4 pattern. It splits digits in runs of up to 3 (`\\p{N}{1,3}`) where ours splits runs of up to 2
(`\\p{N}{1,2}`); its other differences are only spelling (`(?:'[sS]|...)` for `'(?i:[sdmt]|ll|ve|re)`,
no possessive `?+`/`++`, `\\s*[\\r\\n]+` for `\\s*[\\r\\n]`) and split text the same way. Our vocabulary
has no 3-digit tokens, so text without a run of 3+ digits tokenizes identically; "4567" is split as
"456" + "7" and may come out "4", "56", "7" where ours gives "45", "67". Prompts given as token ids
are unaffected.

`check` runs the file in llama.cpp (llama-cpp-python) and compares it with transformers (`reference`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from gptpipe.errors import UserError

# ftype -> (GGML type of the 2-D weights, GGUF general.file_type)
FTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
PRE = "llama-bpe"

# HF parameter name (inside model.layers.N.) -> llama.cpp tensor name (inside blk.N.)
BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


# {% generation %} marks the assistant's tokens for training (transformers' own Jinja tag); other Jinja
# engines (llama.cpp's, llama-cpp-python's) refuse an unknown tag, and rendering never needs it.
GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def gguf_name(hf: str) -> str:
    base = hf.removesuffix(".weight")
    if base in TOP_NAMES:
        return TOP_NAMES[base] + ".weight"
    layer, rest = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", base).groups()
    return f"blk.{layer}.{BLOCK_NAMES[rest]}.weight"


def rope_interleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of Wq or Wk from HF's RoPE layout to llama.cpp's.

    HF's Llama rotates the pairs (i, i + d/2) of each head ("rotate_half"); llama.cpp's llama
    architecture rotates adjacent pairs (2i, 2i + 1). Row 2i + j of a head takes HF row i + j*d/2,
    so llama.cpp rotates the same pairs; q and k move alike, so attention scores are unchanged.
    """
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def write(model_dir: Path, out_path: Path, ftype: str = "f16") -> Path:
    """Convert the HF Llama dir `model_dir` to the GGUF file `out_path`.

    ftype: "f32", "f16" or "q8_0" for the 2-D weights; norms stay f32, and under q8_0 a matrix whose
    rows are not whole 32-value blocks is stored f16.
    """
    import gguf
    from safetensors.torch import load_file

    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {list(FTYPES)}, not {ftype!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta", 10000.0)}
    if cfg["model_type"] != "llama" or rope.get("rope_type", "default") != "default":
        raise UserError(f"{model_dir}: only plain Llama with default RoPE can be written as GGUF; export a "
                        "model of that architecture")
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    qtype, file_type = FTYPES[ftype]

    w = gguf.GGUFWriter(out_path.with_suffix(".tmp"), "llama")
    w.add_name(model_dir.name)
    w.add_file_type(gguf.LlamaFileType[file_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    add_tokenizer(w, model_dir, cfg["vocab_size"])

    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights |= load_file(f)
    for hf, t in weights.items():
        if hf == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd when there is no output tensor
        name, a = gguf_name(hf), t.float().numpy()
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            a = rope_interleave(a, n_head if "attn_q" in name else n_kv)
        qt = gguf.GGMLQuantizationType[qtype if a.ndim == 2 else "F32"]
        if qt == gguf.GGMLQuantizationType.Q8_0 and a.shape[-1] % 32:
            qt = gguf.GGMLQuantizationType.F16
        w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path.with_suffix(".tmp").replace(out_path)


def add_tokenizer(w, model_dir: Path, vocab_size: int) -> None:
    """The HF byte-level BPE as GGUF "gpt2": tokens in byte-to-unicode form, merges, special ids, template."""
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokens = [""] * vocab_size
    types = [gguf.TokenType.NORMAL] * vocab_size
    for t, i in tj["model"]["vocab"].items():
        tokens[i] = t
    for a in tj["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    if "" in tokens or len(tj["model"]["vocab"]) + len(tj["added_tokens"]) != vocab_size:
        raise UserError(f"{model_dir}: the tokenizer does not cover exactly vocab_size={vocab_size} ids; "
                        "rerun the stage that made this dir")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    ids = {t: i for i, t in enumerate(tokens)}
    w.add_bos_token_id(ids[tc["bos_token"]])
    w.add_eos_token_id(ids[tc["eos_token"]])
    if tc.get("pad_token"):
        w.add_pad_token_id(ids[tc["pad_token"]])
    w.add_add_bos_token(False)  # as our HF tokenizer: the chat template writes the BOS itself
    template = model_dir / "chat_template.jinja"
    w.add_chat_template(GENERATION_TAG.sub("", template.read_text() if template.exists() else tc["chat_template"]))


def reference(tok, model, prompt: str, n_new: int = 16) -> dict:
    """What transformers does with `prompt` (our tokenizer's ids): the last position's logits, `n_new` greedy
    tokens and each one's margin (top-1 minus top-2 logit). Computed once per model, then compared against each
    GGUF file by `check`."""
    import torch

    ids = tok(prompt)["input_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double().numpy()
        greedy, margins = list(ids), []
        for _ in range(n_new):
            top = model(torch.tensor([greedy])).logits[0, -1].topk(2)
            greedy.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
    return {"prompt": prompt, "ids": ids, "logits": logits, "greedy": greedy[len(ids):], "margins": margins}


def check(gguf_path: Path, ref: dict) -> dict:
    """Run `gguf_path` in llama.cpp on the reference's token ids and compare it with transformers.

    Feeding our ids makes the logits compare the weights alone; `tokenization_equal` says separately
    whether llama.cpp's own tokenizer agrees. `rel_diff` is the largest last-position logit difference
    over the largest logit magnitude.
    """
    from llama_cpp import Llama

    ids, want, hf = ref["ids"], ref["logits"], ref["greedy"]
    llm = Llama(str(gguf_path), n_ctx=len(ids) + len(hf), logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[len(ids) - 1], dtype=np.float64)
    cpp = list(ids)
    for _ in hf:
        cpp.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([cpp[-1]])
    cpp = cpp[len(ids):]
    diff = float(np.abs(got - want).max())
    first = next((i for i, (a, b) in enumerate(zip(hf, cpp)) if a != b), None)
    margin = None if first is None else ref["margins"][first]
    return {
        "n_prompt": len(ids),
        "max_abs_logit_diff": diff,
        "logit_scale": float(np.abs(want).max()),
        "rel_diff": diff / float(np.abs(want).max()),
        # Where transformers' top two are closer than llama.cpp's logit error, either token is right (a tie),
        # and the continuations part ways from there: they agree if they are equal up to a tie.
        "greedy_agree": margin is None or margin <= diff,
        "first_diff": first,
        "margin_at_first_diff": margin,
        "greedy_hf": hf,
        "greedy_llama": cpp,
        "tokenization_equal": llm.tokenize(ref["prompt"].encode(), add_bos=False, special=True) == ids,
    }
