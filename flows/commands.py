"""`gptpipe flow`, `gptpipe deploy` and `gptpipe worker`: Prefect run with this checkout's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: deployments and workers run flows from it


def env() -> dict[str, str]:
    """This environment with the settings every Prefect process of gptpipe runs under."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages need this venv
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline by default, like the rest of gptpipe
    # Whatever Prefect serves is reachable from this machine only unless the user says otherwise: the API has
    # no auth by default, and a worker's health server would listen on every interface (0.0.0.0).
    env.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")
    env.setdefault("PREFECT_WORKER_WEBSERVER_HOST", "127.0.0.1")
    # Without PREFECT_API_URL a flow run starts a temporary server: ~16 s on 2 cores, close to the 20 s limit.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return env


def flow(args) -> None:
    from flows import repro

    ws = repro.workspace_path(args.workspace)
    force = True if args.force == [] else (args.force or False)
    repro.select(repro.read_graph(ws), args.stages, force)  # bad names fail here, before Prefect starts
    if args.profile:
        repro.check_profile(ws, args.profile)
    os.environ.update(env())  # before Prefect is imported: it reads its settings once
    from flows.speedrun import speedrun

    try:
        result = speedrun(workspace=str(ws), profile=args.profile, stages=args.stages, force=force,
                          dry_run=args.dry_run, wait=not args.no_wait)
    except repro.StageFailed as e:
        print(f"error [flow]: {e}", file=sys.stderr)
        sys.exit(1)
    for stage, outcome in result.items():
        print(f"{stage:<12} {outcome}")


def deploy(args) -> None:
    e = env()
    e.setdefault("GPTPIPE_HOME", str(ROOT))  # flows/prefect.yaml: the checkout the workers run from
    e.pop("GPTPIPE_CHECKOUT", None)  # the stage deployments' placeholder: each worker fills it with its own checkout
    names = [x for n in args.name or [] for x in ("--name", n)] or ["--all"]
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", "flows/prefect.yaml", *names]
    print("+", " ".join(["prefect", *cmd[3:]]), flush=True)
    sys.exit(subprocess.call(cmd, cwd=ROOT, env=e))


def worker(args) -> None:
    # Flow runs start in a throwaway folder; the deployments' pull step moves them to $GPTPIPE_HOME (this checkout).
    # GPTPIPE_CHECKOUT: the stage deployments (flow.remote set) run in the checkout of the worker that takes them.
    e = env() | {"GPTPIPE_HOME": str(ROOT), "GPTPIPE_CHECKOUT": str(ROOT)}
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "worker", "start", "--pool", args.pool, "--type", "process",
           *(["--limit", str(args.limit)] if args.limit else [])]
    print("+", " ".join(["prefect", *cmd[3:]]), f"(GPTPIPE_HOME={ROOT})", flush=True)
    os.execve(sys.executable, cmd, e)  # the worker takes this process: signals reach it directly
