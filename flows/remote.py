"""One stage with a DVC remote: its dvc.lock entries in, its inputs pulled, `dvc repro -s STAGE`, its outputs pushed.

This is what lets any machine continue the graph. DVC's run cache cannot carry our stages (DVC never run-caches a
stage with a `persist: true` output, and every output here is one, so that a failed stage keeps the previous one),
so what a stage made travels as its dvc.lock entry: the flow hands each stage the entries of the stages it reads
from, and its own when some machine computed it; this writes them into the checkout's dvc.lock, pulls exactly the
inputs they name, restores the outputs when the entry still matches the inputs, params and command (a stage
computed anywhere is not rerun), and otherwise lets DVC decide as always. Nothing here knows Prefect.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from flows import repro
from gptpipe.errors import UserError, cause

RESTORED = "restored"  # the outputs came from the remote: another machine had computed this stage


def check(ws: Path, name: str) -> None:
    """Refuse, in one line, a remote that is not configured, lacks its plugin, or cannot be reached."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        known = list(repo.config["remote"])
        if name not in known:
            raise UserError(f"flow.remote: {name!r} is not a DVC remote of {ws} (it has: {', '.join(known) or 'none'}): "
                            f"`dvc remote add -d {name} URL` (a directory, s3://, gs://, ssh://) and commit .dvc/config")
        url = repo.config["remote"][name].get("url")
        try:
            remote = repo.cloud.get_remote(name)
            there = remote.fs.exists(remote.path)
        except Exception as e:  # a missing plugin, bad credentials, an unknown host: DVC's own first line says which
            raise UserError(f"DVC remote {name!r} ({url}) is unusable: {cause(e)}; fix it with `dvc remote modify "
                            f"{name} ...` or install its plugin (pip install 'gptpipe[s3]', [gs] or [ssh])") from None
        if not there and remote.fs.protocol == "local":
            raise UserError(f"DVC remote {name!r}: directory {url} does not exist (not mounted?): create it, or point "
                            f"the remote elsewhere with `dvc remote modify {name} url PATH`")


def fingerprint(ws: Path) -> dict[str, str]:
    """What every machine must agree on before it runs a stage of the same run."""
    return {f: hashlib.sha256((ws / f).read_bytes()).hexdigest() for f in ("dvc.yaml", "params.yaml")}


def check_same(ws: Path, expected: dict[str, str], origin: str) -> None:
    for f, digest in fingerprint(ws).items():
        if expected.get(f) != digest:
            raise UserError(f"{ws}/{f} differs from the one of the flow run's workspace ({origin}): check out the same "
                            "commit in every worker's checkout (git pull), then run again")


def read_lock(ws: Path) -> dict[str, dict]:
    """{stage: its dvc.lock entry} of the workspace."""
    f = ws / "dvc.lock"
    return (yaml.safe_load(f.read_text()) or {}).get("stages", {}) if f.is_file() else {}


def write_lock(ws: Path, entries: dict[str, dict]) -> None:
    """Put these stages' entries into the workspace's dvc.lock, keeping the others; all or nothing (a rename)."""
    if not entries:
        return
    f = ws / "dvc.lock"
    lock = yaml.safe_load(f.read_text()) if f.is_file() else None
    lock = lock or {"schema": "2.0", "stages": {}}
    lock["stages"] = {**lock.get("stages", {}), **entries}
    tmp = f.with_name(f".dvc.lock.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(lock, sort_keys=False))
    tmp.replace(f)


def _find(repo, stage: str):
    return next(s for s in repo.index.stages if repro._address(s) == stage)


def inputs(ws: Path, stage: str) -> list[str]:
    """The stage's deps that other stages make (the rest, code and params, come with the checkout)."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        st = _find(repo, stage)
        made = [o.fs_path for s in repo.index.stages if s is not st for o in s.outs]
        return [d.def_path for d in st.deps if any(d.fs_path == m or d.fs_path.startswith(m + os.sep) for m in made)]


def settled(ws: Path, stage: str) -> tuple[bool, bool]:
    """(its dvc.lock entry matches its command, inputs and params; its outputs here are missing or others)."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo, repo.lock:
        st = _find(repo, stage)
        return bool(st.outs) and not st.changed_stage() and not st.changed_deps(), st.changed_outs()


def restorable(ws: Path, stage: str) -> bool:
    """Computed somewhere (its dvc.lock entry matches), but the outputs here are missing or others."""
    return all(settled(ws, stage))


def dvc(ws: Path, args: list[str], log: Callable[[str], None], check: bool = True) -> int:
    log("+ dvc " + " ".join(args))
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=repro.stage_env(), capture_output=True,
                       text=True)
    lines = [line.rstrip() for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    for line in lines:
        log(line)
    if r.returncode and check:
        raise repro.StageFailed(args[-1], r.returncode, [f"dvc {' '.join(args)} exited {r.returncode}", *lines[-8:]])
    return r.returncode


def pull_inputs(ws: Path, stage: str, remote: str, entries: dict[str, dict], log: Callable[[str], None]) -> None:
    write_lock(ws, entries)
    if paths := inputs(ws, stage):
        dvc(ws, ["pull", "-r", remote, "--force", *paths], log)


def repro_shared(ws: Path, stage: str, force: bool, remote: str, entries: dict[str, dict],
                 log: Callable[[str], None] = print, spent: dict | None = None) -> str:
    """Bring one stage up to date through the remote; return RAN, SKIPPED, CACHED or RESTORED.

    The outputs are pushed only after the stage succeeded, so the remote never holds a half-made one (DVC writes
    each object under a temporary name and renames it, so a killed push leaves none either). `spent` gets the
    seconds of each step (pull, repro, push).
    """
    spent = {} if spent is None else spent
    t0 = time.perf_counter()
    pull_inputs(ws, stage, remote, entries, log)
    restored = (not force and restorable(ws, stage)
                and dvc(ws, ["pull", "-r", remote, "--force", stage], log, check=False) == 0)
    t1 = time.perf_counter()
    outcome = repro.repro(ws, stage, force, log)
    t2 = time.perf_counter()
    if not (restored and outcome == repro.SKIPPED):
        dvc(ws, ["push", "-r", remote, stage], log)  # a skipped stage too: the remote may not have it yet
    spent.update(pull=t1 - t0, repro=t2 - t1, push=time.perf_counter() - t2)
    return RESTORED if restored and outcome == repro.SKIPPED else outcome


def join(ws: Path, stage: str, node: int, force: bool, remote: str, entries: dict[str, dict],
         log: Callable[[str], None] = print, spent: dict | None = None) -> str:
    """Node `node` (> 0) of a stage that spans machines (`nnodes` > 1): its inputs pulled, then the stage's own command
    with GPTPIPE_NODE_RANK set, joining node 0's rendezvous; RAN, or SKIPPED when the entries say the stage is
    computed (node 0 then skips or restores it, and would not come to the rendezvous).

    Not `dvc repro`: only node 0 writes outputs, so DVC here would call them missing. Nothing is pushed.
    """
    from dvc.repo import Repo

    from gptpipe.dist import NODE_RANK

    spent = {} if spent is None else spent
    t0 = time.perf_counter()
    pull_inputs(ws, stage, remote, entries, log)
    t1 = time.perf_counter()
    if not force and settled(ws, stage)[0]:
        log(f"{stage}: computed already (dvc.lock): node {node} has nothing to do")
        spent.update(pull=t1 - t0, repro=0.0, push=0.0)
        return repro.SKIPPED
    with Repo(str(ws)) as r:
        cmd = _find(r, stage).cmd
    log(f"+ {NODE_RANK}={node} {cmd}")
    # Its words as arguments, no shell: a value dvc.yaml interpolates from params stays a value.
    proc = subprocess.Popen(shlex.split(cmd), cwd=ws, env={**repro.stage_env(), NODE_RANK: str(node)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = collections.deque(repro.lines(proc, log), maxlen=12)
    if proc.wait():
        failed = repro.StageFailed(stage, proc.returncode, [f"node {node}: `{cmd}` exited {proc.returncode}", *tail])
        failed.bad_input = proc.returncode == 2  # our stages' exit status on bad input
        raise failed
    spent.update(pull=t1 - t0, repro=time.perf_counter() - t1, push=0.0)
    return repro.RAN
