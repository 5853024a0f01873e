"""The `gptpipe` command: thin conveniences over params.yaml and `dvc repro`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from gptpipe.errors import UserError, user_errors


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="gptpipe", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="set params (validated, written to params.yaml), then `dvc repro` a stage")
    run.set_defaults(func=cmd_run)
    run.add_argument("stage", nargs="?", help="stage to bring up to date with its ancestors (default: all)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. pretrain.lr=1e-3")
    run.add_argument("--single", action="store_true", help="only this stage (`dvc repro -s`)")
    run.add_argument("--force", action="store_true", help="rerun even if up to date")
    run.add_argument("--dry", action="store_true", help="set the params, then only print what would run")

    show = sub.add_parser("params", help="validate params.yaml and print it resolved (derived sizes included)")
    show.set_defaults(func=cmd_params)
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    prof = sub.add_parser("profile", help="apply a profile overlay from profiles/ onto params.yaml")
    prof.set_defaults(func=cmd_profile)
    prof.add_argument("action", choices=["use", "list"])
    prof.add_argument("name", nargs="?")

    pl = sub.add_parser("plan", help="size a run: params, tokens, FLOPs, hours and cost for a depth on N nodes x G GPUs")
    pl.set_defaults(func=cmd_plan)
    pl.add_argument("--depth", type=int, default=20)
    pl.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    pl.add_argument("--nodes", type=int, default=1, help="machines, each with --gpus GPUs")
    pl.add_argument("--gpu", default="h100", help="h100, h200, a100, l40s, 4090")
    pl.add_argument("--mfu", type=float, default=0.4, help="expected model FLOPs utilisation, 0-1 (measure: bench/gpu.sh)")
    pl.add_argument("--price", type=float, help="$ per GPU-hour (default: a rough on-demand price for --gpu)")
    pl.add_argument("--params", action="store_true", help="size pretrain as params.yaml sets it: model, tokens, "
                    "pretrain.nnodes x pretrain.nproc devices at device.peak_flops (--depth/--gpus/--nodes unused)")

    fl = sub.add_parser("flow", help="run the Prefect speedrun flow here: one task per DVC stage, DVC decides what runs")
    fl.set_defaults(func=cmd_prefect)
    fl.add_argument("action", choices=["run"])
    fl.add_argument("--workspace", default=".", help="the gptpipe checkout to run in (default: the current folder)")
    fl.add_argument("--profile", help="apply profiles/PROFILE.yaml to params.yaml first")
    fl.add_argument("--stage", action="append", dest="stages", metavar="STAGE", help="only this stage (repeatable)")
    fl.add_argument("--force", nargs="*", metavar="STAGE",
                    help="rerun even if up to date: these stages, or every selected one when none is named")
    fl.add_argument("--dry-run", action="store_true", help="say which stages would run, change nothing")
    fl.add_argument("--no-wait", action="store_true", help="fail at once if another run holds the workspace")

    dep = sub.add_parser("deploy", help="create or update the deployments in flows/prefect.yaml (`prefect deploy`)")
    dep.set_defaults(func=cmd_prefect)
    dep.add_argument("--name", action="append", metavar="NAME", help="only this deployment, e.g. nightly (default: all)")

    wk = sub.add_parser("worker", help="start a Prefect process worker on a work pool, running flows from this checkout")
    wk.set_defaults(func=cmd_prefect)
    wk.add_argument("--pool", required=True, help="e.g. gptpipe-cpu, gptpipe-gpu")
    wk.add_argument("--limit", type=int, help="at most this many flow runs at once (1 on a box that is one node of a "
                                              "multi-node stage, so each node's run lands on its own box)")

    hn = sub.add_parser("harness", help="run lm-evaluation-harness tasks on an HF model dir; rows go to the next report")
    hn.set_defaults(func=cmd_harness)
    hn.add_argument("model", help="an HF model directory, e.g. export/hf or models/sft")
    hn.add_argument("--tasks", required=True, help="comma-separated lm_eval task names")
    hn.add_argument("--include-path", help="a folder of your own task YAMLs (local data files)")
    hn.add_argument("--limit", type=int, help="at most this many examples per task")
    hn.add_argument("--device", default="cpu")

    ch = sub.add_parser("chat", help="talk to a model in the terminal (default: the exported final model)")
    ch.set_defaults(func=cmd_chat)
    ch.add_argument("model", nargs="?", type=Path, help="an HF model dir (export/hf, models/sft) or a .gguf file")
    ch.add_argument("-p", "--prompt", help="one question: print the reply and exit")
    ch.add_argument("--temperature", type=float, default=0.7, help="0: greedy (default 0.7)")
    ch.add_argument("--top-k", type=int, default=50, help="0: off (default 50)")
    ch.add_argument("--top-p", type=float, default=1.0)
    ch.add_argument("--max-new-tokens", type=int, default=64)
    ch.add_argument("--seed", type=int, default=0)

    sv = sub.add_parser("serve", help="an OpenAI-compatible API and a web chat page for a model (llama.cpp)")
    sv.set_defaults(func=cmd_serve)
    sv.add_argument("model", nargs="?", type=Path, help="a .gguf file or an HF model dir (default: export/hf)")
    sv.add_argument("--host", default="127.0.0.1", help="default loopback; another address needs --allow-remote")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=os.environ.get("GPTPIPE_API_KEY"),
                    help="require 'Authorization: Bearer KEY' on every API request (default: $GPTPIPE_API_KEY)")
    sv.add_argument("--allow-remote", action="store_true", help="allow --host beyond this machine")
    sv.add_argument("--model-name", default="gptpipe", help="the model id clients send (default gptpipe)")

    args = ap.parse_args(argv)
    with user_errors("gptpipe"):
        args.func(args)


def cmd_run(args) -> None:
    from gptpipe import profile

    if args.set:
        profile.set_values(args.set)
    cmd = ["dvc", "repro", *(["-s"] if args.single else []), *(["-f"] if args.force else []),
           *(["--dry"] if args.dry else []), *([args.stage] if args.stage else [])]
    print("+", " ".join(cmd), flush=True)
    sys.exit(subprocess.call(cmd))


def cmd_params(args) -> None:
    from gptpipe.config import load_params
    from gptpipe.model import count_params, llama_config

    p = load_params(overrides=args.set)
    out = p.model_dump()
    m = p.model
    n = count_params(llama_config(m, p.tokenizer.vocab_size))
    out["model"] |= {"resolved": {"width": m.d_model, "n_head": m.heads, "n_kv_head": m.kv_heads, "params": n}}
    print(json.dumps(out, indent=2))


def cmd_plan(args) -> None:
    from gptpipe.plan import GPUS, describe, describe_params, plan

    if args.gpu not in GPUS:
        raise UserError(f"--gpu {args.gpu}: unknown GPU; known: {', '.join(GPUS)}")
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu {args.mfu}: a fraction of peak, in (0, 1], e.g. 0.4")
    if min(args.depth, args.gpus, args.nodes) < 1 or (args.price is not None and args.price < 0):
        raise UserError("--depth, --gpus and --nodes must be at least 1, --price at least 0")
    if args.params:
        from gptpipe.config import load_params

        print(describe_params(load_params(), args.gpu, args.mfu, args.price))
        return
    p = plan(args.depth, args.nodes * args.gpus, args.gpu, mfu=args.mfu, price=args.price)
    print(describe(p, f"depth {args.depth}", args.gpus, args.gpu, args.mfu, args.nodes))


def cmd_profile(args) -> None:
    from gptpipe import profile
    from gptpipe.config import load_params

    if args.action == "list":
        for f in sorted(profile.PROFILES.glob("*.yaml")):
            print(f.stem)
        return
    if not args.name:
        raise UserError("gptpipe profile use NAME: name a profile (see `gptpipe profile list`)")
    overlay = profile.use(args.name)
    print(f"params.yaml: applied {overlay}; `git diff params.yaml` shows what changed, `dvc repro` runs it")
    p = load_params()
    if p.device.type == "cuda":  # what the switch costs, before anyone starts it
        from gptpipe.plan import describe_params

        print(describe_params(p) + " (`gptpipe plan --params --gpu G --mfu M` for other GPUs; measure MFU with "
              "bench/gpu.sh)")


# ---------------------------------------------------------------- Prefect: flows/commands.py, imported only here
def checkout() -> Path:
    """The checkout this gptpipe runs from. flows/ sits beside the package there; it is not installed with it."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "flows" / "speedrun.py").is_file():
        raise UserError(f"{root}/flows/speedrun.py not found: the flow commands need a gptpipe checkout, "
                        "not only the installed package")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def cmd_prefect(args) -> None:
    """flow, deploy and worker live in flows/commands.py, importable from a checkout only."""
    checkout()
    from flows import commands

    getattr(commands, args.cmd)(args)


def cmd_harness(args) -> None:
    """reports/harness/<name>.json in the evaluate stage's format; the report stage adds them to the run."""
    from gptpipe import harness
    from gptpipe.artifacts import HARNESS
    from gptpipe.io import write_json
    from gptpipe.report.card import fmt

    name = Path(args.model).resolve().name
    name = "export" if name == "hf" else name
    rows = [r | {"model": name} for r in harness.run(args.model, [t for t in args.tasks.split(",") if t],
                                                    args.include_path, args.limit, device=args.device)]
    path = write_json(Path(HARNESS) / f"{name}.json", {"model": name, "rows": rows, "samples": []})
    for r in rows:
        print(f"{r['task']:<24} {r['metric']:<16} {fmt(r['value'])} ± {fmt(r['stderr'])}  (n={r['n']})")
    print(f"harness: {path}; `gptpipe run report --single --force` adds it to the report")


def cmd_chat(args) -> None:
    from gptpipe import chat

    if not (args.temperature >= 0 and args.top_k >= 0 and 0 < args.top_p <= 1 and args.max_new_tokens >= 1):
        raise UserError("chat: need --temperature >= 0, --top-k >= 0, 0 < --top-p <= 1 and --max-new-tokens >= 1")
    s = chat.Sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
    bot = chat.load(args.model)
    if args.prompt is None:
        chat.repl(bot, str(args.model or chat.DEFAULT), s)
    else:
        chat.reply(bot, [chat.user(args.prompt)], s)


def cmd_serve(args) -> None:
    from gptpipe import chat, serve

    serve.serve(args.model or chat.DEFAULT, args.host, args.port, args.api_key, args.allow_remote, args.model_name)


if __name__ == "__main__":
    main()
