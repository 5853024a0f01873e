"""export/: the final chat model as stock files real clients load, each checked by such a client.

- `hf/`: safetensors, config, generation config and the tokenizer with its chat template, loadable by any
  transformers release that knows Llama (the tokenizer class is named `PreTrainedTokenizerFast`, not
  transformers 5's `TokenizersBackend`, so 4.x loads it too); no trust_remote_code.
- `gguf/`: one GGUF file per type asked for, checked in llama.cpp against transformers.
- `README.md`: the model card: eval table, quantization, how to use it, the training recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from gptpipe import gguf
from gptpipe.model import load_pretrained
from gptpipe.report.card import report_card
from gptpipe.report.markdown import table

RECIPE = ("data", "tasks", "tokenizer", "model", "pretrain", "midtrain", "sft", "lora", "reward", "pairs", "dpo", "rl",
          "quantize")


def chat(tok, model, messages: list[dict], new_tokens: int) -> str:
    """The greedy reply of a model to a conversation, as a user would get it."""
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def hf(tok, model, out: Path) -> None:
    """A clean copy of the final model for users: KV cache on, generation stops at the end of a turn."""
    from transformers import GenerationConfig

    model.config.use_cache = True
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    tok.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def check_hf(exported: Path, messages: list[dict], new_tokens: int, want: str) -> dict:
    """Stock transformers loads the export and chats; its reply is `want`, the source model's reply."""
    got = chat(*load_pretrained(exported, dtype=torch.float32), messages, new_tokens)
    return {"artifact": "export/hf", "check": "stock transformers loads it and chats like the source model",
            "passed": got == want,
            "detail": f"{messages[-1]['content']!r} -> {got!r}" + ("" if got == want else f" (source: {want!r})")}


def check_gguf(path: Path, ftype: str, ref: dict) -> dict:
    """llama.cpp loads the file and continues the reference prompt as transformers does (`gguf.reference`).

    f32 and f16 must give the same greedy tokens; q8_0 rounds every weight, so for it a small logit error
    is the check and the greedy tokens are reported.
    """
    r = gguf.check(path, ref)
    same, n = r["greedy_equal"], len(ref["greedy"])
    passed = same if ftype in ("f32", "f16") else r["max_abs_logit_diff"] < 0.05 * r["logit_scale"]
    return {"artifact": f"export/gguf/{path.name}", "check": f"llama.cpp ({ftype}) continues like transformers",
            "passed": bool(passed and r["tokenization_equal"]),
            "detail": f"greedy {n} tokens {'equal' if same else 'differ at ' + str(r['first_diff'])}; "
                      f"max |Δlogit| {r['max_abs_logit_diff']:.2g} (logit scale {r['logit_scale']:.3g}); "
                      f"tokenization {'equal' if r['tokenization_equal'] else 'differs'}"}


def files(root: Path) -> list[dict]:
    """The model files under `root` (paths as seen from its parent), with their format and size."""
    return [{"path": str(f.relative_to(root.parent)), "format": kind(f), "bytes": f.stat().st_size}
            for f in sorted(root.rglob("*")) if f.is_file() and kind(f)]


def kind(f: Path) -> str | None:
    if f.suffix == ".safetensors":
        return "hf safetensors"
    if f.suffix == ".gguf":
        return "gguf " + f.stem.split("-")[-1]
    return None


def model_card(name: str, evals: list[dict], quant: dict | None, checks: list[dict], params: dict,
               gguf_names: list[str]) -> str:
    """export/README.md: what the model is, how good, how to run it, and how it was made."""
    header, rows = report_card(evals)
    q = ""
    if quant:
        q = (f"\n## Quantized copy\n\n`models/quantized` ({quant['scheme']} weight-only, torchao): weights "
             f"{quant['bytes_before'] / 1e6:.2f} → {quant['bytes_after'] / 1e6:.2f} MB, generation "
             f"{quant['tokens_per_s_before']:.0f} → {quant['tokens_per_s_after']:.0f} tokens/s on "
             f"{quant['device']}; its scores are the `quantized` column above.\n")
    gguf_file = gguf_names[-1] if gguf_names else "model-f32.gguf"
    return "\n".join([
        f"# gptpipe chat model ({name})", "",
        "A Llama-architecture chat model trained from scratch by the gptpipe pipeline "
        "(pretrain → midtrain → SFT → LoRA / reward model → DPO / RL). Chat format: the tokenizer's chat template.", "",
        "## Evaluation", "", table(header, rows), "",
        "`bpb`: validation bits per byte (lower is better); `accuracy`: exact match of greedy answers on held-out "
        "tasks; `mc_accuracy`: multiple choice by log-likelihood; `pairwise_accuracy`: the reward model.", q,
        "## Export checks", "", table(["artifact", "check", "passed", "detail"],
                                     [[c["artifact"], c["check"], "yes" if c["passed"] else "NO", c["detail"]]
                                      for c in checks]), "",
        "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("hf")',
        'model = AutoModelForCausalLM.from_pretrained("hf")',
        'ids = tok.apply_chat_template([{"role": "user", "content": "Repeat the word: blue"}],',
        '                              add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        'print(tok.decode(model.generate(**ids, max_new_tokens=16)[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```", "", f"llama.cpp: `llama-cli -m gguf/{gguf_file} -cnv` (the chat template is in the file).", "",
        "## Training recipe (params.yaml)", "", "```yaml",
        yaml.safe_dump({k: params[k] for k in RECIPE if k in params}, sort_keys=False).rstrip(), "```", ""])
