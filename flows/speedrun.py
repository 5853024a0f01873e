"""The speedrun flow: every DVC stage of a workspace as a Prefect task, in graph order.

DVC owns *what* runs: each task is `dvc repro -s STAGE`, so dvc.lock decides whether the stage is up to date
and records what it made. Prefect owns *when and where*: retries, logs, schedules, workers. A flow run holds
the workspace (flows/lock.py) from its first change to its last stage, and publishes the eval table and the
report card as artifacts. Run it with `gptpipe flow run`, or through the deployments in flows/prefect.yaml.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed
from pydantic import ValidationError

from flows import dispatch, publish, repro
from flows.lock import workspace_lock
from gptpipe.config import Flow, Resources, format_errors, read_yaml
from gptpipe.errors import UserError

# The checkout this code runs from (a worker's pull step moves it there): the workspace unless told otherwise.
CHECKOUT = Path(__file__).resolve().parents[1]
STATE_NAMES = {repro.RAN: "Completed", repro.SKIPPED: "Skipped", repro.CACHED: "Cached"}
PUBLISH = {"evaluate": publish.eval_table, "report": publish.report_card}  # stage -> artifact made from its outputs


def flow_settings(ws: Path, section: str = "flow", model=Flow):
    """The `flow:` (or `resources:`) section of the workspace's params.yaml. Only that: each stage validates the rest."""
    raw = read_yaml(ws / "params.yaml")
    if section not in raw:
        raise UserError(f"{ws}/params.yaml has no `{section}:` section ({', '.join(model.model_fields)}): "
                        "copy it from gptpipe's params.yaml")
    try:
        return model.model_validate(raw[section])
    except ValidationError as e:
        raise UserError(format_errors(e, f"{ws}/params.yaml, section {section}")) from None


@task(task_run_name="{stage}", cache_policy=NO_CACHE, retry_condition_fn=repro.worth_retrying)
def run_stage(workspace: str, stage: str, force: bool = False):
    # NO_CACHE: DVC is the cache. Prefect must ask it every time, never skip a stage on its own.
    log = get_run_logger()
    t0 = time.perf_counter()
    try:
        outcome = repro.repro(Path(workspace), stage, force, log=repro.by_level(log))
    except repro.StageFailed as e:
        # The stage's own error is in the log already: fail with it, not with a traceback of this module.
        # (A returned Failed state is retried like a raised exception, after `repro.worth_retrying` agrees.)
        log.error(str(e))
        return Failed(message=str(e), data=e)
    said = {repro.RAN: f"ran in {time.perf_counter() - t0:.1f} s", repro.SKIPPED: "up to date, DVC skipped it",
            repro.CACHED: "restored from DVC's run cache"}[outcome]
    log.info(f"{stage}: {said}")
    # The state name shows ran vs skipped in the UI; the type stays COMPLETED either way.
    return Completed(name=STATE_NAMES[outcome], message=f"{stage}: {said}", data=outcome)


@contextmanager
def kept(path: Path):
    """Put the file back as it was when the block ends."""
    before = path.read_bytes()
    try:
        yield
    finally:
        path.write_bytes(before)


def holder_line() -> str:
    from prefect.runtime import flow_run

    return (f"flow run {flow_run.name!r} ({flow_run.id}), pid {os.getpid()} on {socket.gethostname()}, "
            f"since {time.strftime('%H:%M:%S')}")


@flow(name="speedrun")
def speedrun(workspace: str | None = None, profile: str | None = None, stages: list[str] | None = None,
             force: bool | list[str] = False, dry_run: bool = False, wait: bool = True) -> dict[str, str]:
    """Bring a gptpipe workspace up to date, one DVC stage per task; return {stage: ran | skipped | cached}.

    Args:
        workspace: the gptpipe checkout to run in (default: the one this flow's code comes from).
        profile: apply profiles/PROFILE.yaml to params.yaml first (`gptpipe profile use`).
        stages: only these stages, each alone (`dvc repro -s`), in graph order (default: all of them).
        force: rerun even if up to date: true for every selected stage, or a list of stage names.
        dry_run: return {stage: would run | up to date} instead, changing nothing.
        wait: if another run holds the workspace, wait for it (up to flow.lock_timeout_s) instead of failing.
    """
    log = get_run_logger()
    try:
        return run_pipeline(workspace, profile, stages, force, dry_run, wait, log)
    except (UserError, repro.StageFailed) as e:
        # Expected failures (bad input, a busy workspace, a failed stage): the message says it all,
        # a traceback through this module would only bury it.
        if not isinstance(e, repro.StageFailed):  # a stage's error is logged by its task already
            log.error(str(e))
        return Failed(message=str(e), data=e)


def run_pipeline(workspace, profile, stages, force, dry_run, wait, log) -> dict[str, str]:
    t0 = time.perf_counter()
    ws = repro.workspace_path(workspace or CHECKOUT)
    settings = flow_settings(ws)
    graph = repro.read_graph(ws)
    chosen, forced = repro.select(graph, stages, force)
    if profile:
        repro.check_profile(ws, profile)  # before waiting on the lock, not after
    log.info(f"workspace {ws}: stages {', '.join(chosen)}" + (f"; forced {', '.join(sorted(forced))}" if forced else ""))
    if settings.remote and not dry_run:  # every stage on a worker of its pool, data through the remote
        resources = flow_settings(ws, "resources", Resources)
        results = dispatch.run(ws, settings, resources, graph, chosen, forced, profile, wait, holder_line(), log)
        log.info(f"speedrun done in {time.perf_counter() - t0:.1f} s: "
                 + "; ".join(f"{stage} {outcome}" for stage, outcome in results.items()))
        return results

    with workspace_lock(ws, holder_line(), settings.lock_timeout_s if wait else 0, on_wait=log.warning):
        if dry_run:
            with kept(ws / "params.yaml"):  # a dry run may apply a profile to see what it reruns, then undo it
                if profile:
                    repro.use_profile(ws, profile, log=log.info)
                runs = repro.plan(ws, graph, chosen, forced)
            plan = {s: "would run" if r else "up to date" for s, r in runs.items()}
            log.info("dry run, nothing changed: " + "; ".join(f"{s} {p}" for s, p in plan.items()))
            return plan

        if profile:
            repro.use_profile(ws, profile, log=log.info)
        run = run_stage.with_options(retries=settings.retries, retry_delay_seconds=settings.retry_delay_s)
        results: dict[str, str] = {}
        for i, stage in enumerate(chosen):
            state = run(str(ws), stage, stage in forced, return_state=True)
            if state.is_failed():
                log.error(f"{stage} failed; not run: {', '.join(chosen[i + 1:]) or 'none'}")
            results[stage] = state.result()  # re-raises the stage's error: the flow run fails with it
            if stage in PUBLISH:
                PUBLISH[stage](ws)

    by = {o: [s for s, r in results.items() if r == o] for o in STATE_NAMES}
    log.info(f"speedrun done in {time.perf_counter() - t0:.1f} s: "
             + "; ".join(f"{o} {', '.join(s)}" for o, s in by.items() if s))
    return results
