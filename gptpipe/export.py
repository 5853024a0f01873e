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
from gptpipe.config import Params
from gptpipe.dist import Proc
from gptpipe.model import load_pretrained
from gptpipe.report.card import report_card
from gptpipe.report.markdown import table


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

    f32 and f16 must give the same greedy tokens, up to a tie (`gguf.check`); q8_0 rounds every weight, so for it
    a small logit error is the check and the greedy tokens are reported.
    """
    r = gguf.check(path, ref)
    same, n = r["greedy_agree"], len(ref["greedy"])
    passed = same if ftype in ("f32", "f16") else r["max_abs_logit_diff"] < 0.05 * r["logit_scale"]
    return {"artifact": f"export/gguf/{path.name}", "check": f"llama.cpp ({ftype}) continues like transformers",
            "passed": bool(passed and r["tokenization_equal"]),
            "detail": f"greedy {n} tokens {'equal' if r['first_diff'] is None else 'differ at ' + str(r['first_diff'])}"
                      f"{' (a tie)' if same and r['first_diff'] is not None else ''}; "
                      f"max |Δlogit| {r['max_abs_logit_diff']:.2g} (logit scale {r['logit_scale']:.3g}); "
                      f"tokenization {'equal' if r['tokenization_equal'] else 'differs'}"}


def files(root: Path, shown_as: str = "export") -> list[dict]:
    """The model files under `root` (paths as `shown_as/...`), with their format and size."""
    return [{"path": str(shown_as / f.relative_to(root)), "format": kind(f), "bytes": f.stat().st_size}
            for f in sorted(root.rglob("*")) if f.is_file() and kind(f)]


def kind(f: Path) -> str | None:
    if f.suffix == ".safetensors":
        return "hf safetensors"
    if f.suffix == ".gguf":
        return "gguf " + f.stem.split("-")[-1]
    return None


def model_card(name: str, evals: list[dict], quant: dict | None, checks: list[dict], recipe: dict,
               gguf_names: list[str]) -> str:
    """export/README.md: what the model is, how good, how to run it, and how it was made (`recipe`: the params
    sections of the stages it came from)."""
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
        yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""])


def run(p: Params, proc: Proc, *, source: Path, evals: Path, quantize: Path, tasks: Path, out: Path, report: Path) -> dict:
    """The export stage: `source` (export.model) as out/{hf,gguf,README.md}, each checked by a real client
    (stock transformers chats like the source model; llama.cpp continues like transformers). A failed check
    fails the stage, so the previous export stays; the checks and the files go to `report`."""
    from gptpipe import artifacts
    from gptpipe.config import read_yaml
    from gptpipe.errors import UserError
    from gptpipe.io import read_json, read_jsonl, write_json

    rows = [r for f in sorted(evals.glob("*.json")) for r in read_json(f, made_by="evaluate")["rows"]]
    quant = read_json(quantize, made_by="quantize")
    question = read_jsonl(tasks / "eval.jsonl", ("prompt",), made_by="tasks")[0]["prompt"]
    tok, model = load_pretrained(source, dtype=torch.float32)  # loaded once: the reference for every check
    n = p.export.check_new_tokens
    want = chat(tok, model, question, n)
    ref = gguf.reference(tok, model, tok.apply_chat_template(question, add_generation_prompt=True, tokenize=False), n)
    hf(tok, model, out / "hf")
    checks = [check_hf(out / "hf", question, n, want)]
    (out / "gguf").mkdir()
    for ftype in p.export.gguf:
        checks.append(check_gguf(gguf.write(source, out / "gguf" / f"model-{ftype}.gguf", ftype), ftype, ref))
    params = read_yaml("params.yaml")
    recipe = {k: params[k] for k in artifacts.params_of(f"models/{p.export.model}") if isinstance(params.get(k), dict)}
    (out / "README.md").write_text(model_card(p.export.model, rows, quant, checks, recipe,
                                              [f"model-{t}.gguf" for t in p.export.gguf]))
    for c in checks:
        print(f"export: {'ok  ' if c['passed'] else 'FAIL'} {c['artifact']}: {c['check']} ({c['detail']})")
    failed = [c["artifact"] for c in checks if not c["passed"]]
    if failed:
        raise UserError(f"export checks failed for {', '.join(failed)}; see the lines above")
    written = files(out)  # the paths as they will be once out is renamed into place
    write_json(report, {"model": p.export.model, "files": written, "checks": checks})
    return {"model": p.export.model, "checks_passed": sum(c["passed"] for c in checks), "checks": len(checks),
            **{f"{f['format'].replace(' ', '_')}_bytes": f["bytes"] for f in written}}
