"""export: the final chat model (export.model) -> export/{hf,gguf,README.md}, each checked by a real client.

The checks (stock transformers chats like the source model; llama.cpp continues like transformers) go to
reports/export.json with the files and their sizes; a failed check fails the stage.
"""
import time
from pathlib import Path

from gptpipe.errors import user_errors

with user_errors("export"):
    import torch

    from gptpipe import export, gguf
    from gptpipe.artifacts import MODELS
    from gptpipe.config import load_params, read_yaml
    from gptpipe.errors import UserError, require_file
    from gptpipe.io import atomic_dir, read_json, read_jsonl, write_json, write_metrics
    from gptpipe.model import load_pretrained

    p = load_params()
    source = require_file(*MODELS[p.export.model])
    evals = [r for f in sorted(require_file("reports/eval", made_by="evaluate").glob("*.json")) for r in read_json(f, made_by="evaluate")["rows"]]
    quant = read_json(require_file("metrics/quantize.json", made_by="quantize"), made_by="quantize")
    question = read_jsonl(require_file("data/raw/tasks/eval.jsonl", made_by="tasks"), ("prompt",), made_by="tasks")[0]["prompt"]
    t0 = time.perf_counter()
    tok, model = load_pretrained(source, dtype=torch.float32)  # loaded once: the reference for every check
    n = p.export.check_new_tokens
    want = export.chat(tok, model, question, n)
    ref = gguf.reference(tok, model, tok.apply_chat_template(question, add_generation_prompt=True, tokenize=False), n)
    with atomic_dir("export") as out:
        export.hf(tok, model, out / "hf")
        checks = [export.check_hf(out / "hf", question, n, want)]
        (out / "gguf").mkdir()
        for ftype in p.export.gguf:
            path = gguf.write(source, out / "gguf" / f"model-{ftype}.gguf", ftype)
            checks.append(export.check_gguf(path, ftype, ref))
        (out / "README.md").write_text(export.model_card(p.export.model, evals, quant, checks, read_yaml("params.yaml"),
                                                         [f"model-{t}.gguf" for t in p.export.gguf]))
        for c in checks:
            print(f"export: {'ok  ' if c['passed'] else 'FAIL'} {c['artifact']}: {c['check']} ({c['detail']})")
        failed = [c["artifact"] for c in checks if not c["passed"]]
        if failed:  # inside the block: the previous export/ stays in place
            raise UserError(f"export checks failed for {', '.join(failed)}; see the lines above")
    files = export.files(Path("export"))
    write_json("reports/export.json", {"model": p.export.model, "files": files, "checks": checks})
    write_metrics("export", {"model": p.export.model, "checks_passed": sum(c["passed"] for c in checks),
                             "checks": len(checks), **{f"{f['format'].replace(' ', '_')}_bytes": f["bytes"] for f in files},
                             "elapsed_s": round(time.perf_counter() - t0, 2), "device": "cpu"})
