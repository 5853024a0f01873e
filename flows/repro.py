"""The DVC side of the flow: the stage graph, a dry-run plan, and one `dvc repro -s STAGE` with its output streamed.

DVC decides what is up to date (content hashes of deps, params and outs against dvc.lock); this module only
asks it, stage by stage, and tells from its output whether a stage ran. Nothing here imports Prefect, and
nothing here knows what a stage computes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

from gptpipe.errors import UserError

RAN, SKIPPED, CACHED = "ran", "skipped", "cached"  # cached: DVC restored the outputs from its run cache


class StageFailed(Exception):
    """`dvc repro -s STAGE` failed; the message carries the end of the stage's output (its error)."""

    def __init__(self, stage: str, returncode: int, tail: list[str]):
        # Our stages exit 2 on bad input (gptpipe.errors.UserError): the same input fails the same way again.
        self.stage, self.returncode = stage, returncode
        self.bad_input = any(re.search(r"exited with 2\b", line) for line in tail)
        super().__init__(f"stage {stage!r} failed (dvc repro exited {returncode}):\n  " + "\n  ".join(tail))


def worth_retrying(task, task_run, state) -> bool:
    """A Prefect retry condition: retry what may pass next time (a lost GPU, an OOM, a preempted node), not bad
    input, which fails the same way again (a failure whose `bad_input` is set)."""
    return not getattr(state.data, "bad_input", False)


def by_level(log) -> Callable[[str], None]:
    """A line sink for `repro`: DVC's and our stages' error lines ("ERROR: ...", "error [stage]: ...") to
    log.error, the rest to log.info."""
    return lambda line: (log.error if line[:5].lower() == "error" else log.info)(line)


def workspace_path(path: str | Path) -> Path:
    ws = Path(path).expanduser().resolve()
    if not (ws / "dvc.yaml").is_file():
        raise UserError(f"workspace {ws}: no dvc.yaml there; pass the path of a gptpipe checkout (--workspace PATH)")
    return ws


def read_graph(ws: Path) -> dict[str, list[str]]:
    """{stage: the stages it reads from}, every stage of the workspace, each after its inputs.

    Read from dvc.yaml through DVC itself, so this never drifts from what `dvc repro` does.
    Stages that do not depend on each other keep their dvc.yaml order.
    """
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        position = {s: i for i, s in enumerate(repo.index.stages)}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=position.__getitem__)
        return {_address(s): sorted(_address(u) for u in graph.successors(s)) for s in order}


def _address(stage) -> str:
    """The stage's name for `dvc repro` run in the workspace root (DVC's `addressing` is relative to our cwd)."""
    name = getattr(stage, "name", None)  # None: a .dvc file
    return name if name and stage.path_in_repo == "dvc.yaml" else ":".join(filter(None, [stage.path_in_repo, name]))


def select(graph: dict[str, list[str]], stages: list[str] | None, force: bool | list[str]) -> tuple[list[str], set[str]]:
    """The stages to run, in graph order, and those of them to force; unknown names are refused."""
    known = list(graph)
    for name in [*(stages or []), *(force if isinstance(force, list) else [])]:
        if name not in graph:
            raise UserError(f"unknown stage {name!r}: dvc.yaml has {', '.join(known)}")
    chosen = [s for s in known if stages is None or s in stages]
    forced = set(chosen) if force is True else set(force or [])
    if forced - set(chosen):
        raise UserError(f"force names {', '.join(sorted(forced - set(chosen)))}, which is not among the stages to run "
                        f"({', '.join(chosen)}): add it to the stages or drop it from force")
    return chosen, forced


def plan(ws: Path, graph: dict[str, list[str]], chosen: list[str], forced: set[str]) -> dict[str, bool]:
    """{stage: would it run}, without running anything.

    `dvc status` says which stages changed themselves; a stage downstream of one that will run is counted
    as running too, since its inputs are about to change (DVC's own `repro --dry` misses that).
    """
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        # DVC names stages relative to our cwd ("../ws/dvc.yaml:pretrain"): back to the workspace's names.
        prefix = os.path.relpath(ws / "dvc.yaml") + ":"
        changed = {k.removeprefix(prefix) for k in repo.status()}
    runs: dict[str, bool] = {}
    for stage in chosen:
        runs[stage] = stage in forced or stage in changed or any(runs.get(u, False) for u in graph[stage])
    return runs


def stage_env() -> dict[str, str]:
    env = dict(os.environ)
    # DVC runs each stage's `python -m stages.X` through the shell: make `python` (and `dvc`) this
    # interpreter's environment even when the worker was started without the venv on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"  # stage lines reach the log as they are printed, not when the stage exits
    return env


def repro(ws: Path, stage: str, force: bool = False, log: Callable[[str], None] = print) -> str:
    """Bring one stage up to date with `dvc repro -s` (its upstream is not touched); return RAN, SKIPPED or CACHED."""
    cmd = [sys.executable, "-m", "dvc", "repro", "-s", *(["-f"] if force else []), stage]
    log("+ " + " ".join(["dvc", *cmd[3:]]))
    proc = subprocess.Popen(cmd, cwd=ws, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outcome, tail = SKIPPED, deque(maxlen=12)
    for line in lines(proc, log):
        if line.startswith(f"Running stage '{stage}'"):
            outcome = RAN
            tail.clear()  # an error message needs the stage's own lines, not DVC's checks before it
        elif line.startswith(f"Stage '{stage}' is cached"):
            outcome = CACHED
        tail.append(line)
    if proc.wait():
        raise StageFailed(stage, proc.returncode, list(tail))
    return outcome


def lines(proc: subprocess.Popen, log: Callable[[str], None]) -> Iterator[str]:
    """The process's output lines, each logged, as a terminal would end up showing them (a progress bar redraws
    itself with \\r: its last state)."""
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1].rstrip()
        if line:
            log(line)
            yield line


def check_profile(ws: Path, profile: str) -> None:
    if not (ws / "profiles" / f"{profile}.yaml").is_file():
        known = sorted(p.stem for p in (ws / "profiles").glob("*.yaml"))
        raise UserError(f"profile {profile!r} not found in {ws}/profiles; known profiles: {', '.join(known) or 'none'}")


def use_profile(ws: Path, profile: str, log: Callable[[str], None] = print) -> None:
    """`gptpipe profile use NAME` in the workspace: its own code edits (and validates) its params.yaml."""
    check_profile(ws, profile)
    r = subprocess.run([sys.executable, "-m", "gptpipe.cli", "profile", "use", profile], cwd=ws, env=stage_env(),
                       capture_output=True, text=True)
    if r.returncode:
        raise UserError(r.stderr.strip() or f"gptpipe profile use {profile} exited {r.returncode}")
    log(r.stdout.strip())
