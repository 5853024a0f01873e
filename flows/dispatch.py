"""The speedrun across machines: with flow.remote set, each stage is its own flow run on a worker of its pool.

The speedrun flow (flows/speedrun.py) walks the graph as always, but hands each stage to the deployment of its
resource class: `speedrun-stage/gpu` (pool gptpipe-gpu) for the stages in `resources.gpus`, `speedrun-stage/cpu`
(pool gptpipe-cpu) for the rest. That child flow, `speedrun_stage` below, runs in the checkout of whichever worker
picked it up ($GPTPIPE_CHECKOUT, set by `gptpipe worker`) and does flows/remote.py's pull, `dvc repro -s`, push.
What a stage made travels back as its dvc.lock entry (an artifact of the child run), which the parent hands to the
stages that read from it and, at the end, writes into its own workspace's dvc.lock: commit that file, and any clone
with the remote can `dvc pull` the whole pipeline.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled, Completed, Crashed, Failed

from flows import remote, repro
from flows.lock import workspace_lock
from gptpipe.config import Flow, Resources, read_yaml
from gptpipe.errors import UserError

CHECKOUT = Path(__file__).resolve().parents[1]  # a worker's pull step moves the run into its own checkout first
NODE_RANK = "GPTPIPE_NODE_RANK"  # gptpipe.dist's: which machine of a multi-node stage (not imported: torch)
DEPLOYMENT = "speedrun-stage/{}"  # one per resource class, in flows/prefect.yaml
DISPATCH_LOCK = ".dvc/tmp/gptpipe-dispatch.lock"  # not the workspace lock: a child may run a stage in this checkout
STATE_NAMES = {repro.RAN: "Ran", repro.SKIPPED: "Skipped", repro.CACHED: "Cached", remote.RESTORED: "Restored"}
OUTCOMES = {v: k for k, v in STATE_NAMES.items()}
WORKER_TAG = "worker:"  # a child tags its flow run with the worker that runs it, for the parent to watch
BAD_INPUT = "BadInput"  # a child's Failed state with this name fails the same way again: not retried
PARENT_WAIT_S = 30  # how long a child's creation waits for the server to have written its parent task run


class ChildFailed(repro.StageFailed):
    def __init__(self, stage: str, message: str, retry: bool):
        Exception.__init__(self, message)
        self.stage, self.returncode, self.bad_input = stage, None, not retry


def resource_class(resources: Resources, stage: str) -> str:
    return "gpu" if stage in resources.gpus else "cpu"


def nodes(ws: Path, stage: str) -> int:
    """The machines the stage spans: its section's `nnodes` (pretrain, midtrain), else 1. The stage checks the value."""
    section = read_yaml(ws / "params.yaml").get(stage)
    n = section.get("nnodes", 1) if isinstance(section, dict) else 1
    return n if isinstance(n, int) and n > 1 else 1


# ---------------------------------------------------------------- the parent: checks, then one child per stage
def preflight(ws: Path, settings: Flow, resources: Resources, graph: dict, chosen: list[str], log) -> dict:
    """Everything that would fail later, refused now in one line each: {class: (deployment name, pool, its env)}."""
    remote.check(ws, settings.remote)
    if unknown := sorted(set(resources.gpus) - set(graph)):
        raise UserError(f"resources.gpus in {ws}/params.yaml names {', '.join(unknown)}, not a stage of dvc.yaml "
                        f"(stages: {', '.join(graph)}): fix the name or drop it")
    targets, need = {}, {}
    with get_client(sync_client=True) as c:
        for stage in chosen:
            cls = resource_class(resources, stage)
            need[cls] = max(need.get(cls, 1), nodes(ws, stage))
            if cls in targets:
                continue
            name = DEPLOYMENT.format(cls)
            try:
                d = c.read_deployment_by_name(name)
            except ObjectNotFound:
                raise UserError(f"stage {stage!r} runs on resource class {cls} (resources.gpus in params.yaml), but "
                                f"deployment {name} does not exist: run `gptpipe deploy` (flows/prefect.yaml)") from None
            targets[cls] = (name, d.work_pool_name, (d.job_variables or {}).get("env", {}))
    for cls, (name, pool, _) in targets.items():
        wait_for_worker(pool, settings.worker_timeout_s, log, need[cls])
    return targets


def online(c, pool: str) -> int:
    """How many workers of the pool are online."""
    return sum(w.status.value == "ONLINE" for w in c.read_workers_for_work_pool(pool))


def runner_online(c, pool: str, tags: list[str]) -> bool:
    """The worker running a child (the one its `worker:NAME` tag names) is online; before the child has tagged
    itself, any worker of the pool. Prefect marks a worker offline after 3 missed heartbeats."""
    mine = {t.removeprefix(WORKER_TAG) for t in tags if t.startswith(WORKER_TAG)}
    return any(w.status.value == "ONLINE" and (not mine or w.name in mine) for w in c.read_workers_for_work_pool(pool))


def wait_for_worker(pool: str, timeout_s: float, log, need: int = 1) -> None:
    """Until `need` workers of the pool are online (a stage on N machines needs one per machine)."""
    deadline, said = time.monotonic() + timeout_s, False
    with get_client(sync_client=True) as c:
        while True:
            try:
                if (n := online(c, pool)) >= need:
                    return
            except ObjectNotFound:
                raise UserError(f"work pool {pool} does not exist: `prefect work-pool create {pool} --type process`, "
                                f"then start a worker on it (`gptpipe worker --pool {pool}`)") from None
            if time.monotonic() > deadline:
                if need > 1:
                    raise UserError(f"{n} of the {need} workers a stage on {need} machines (nnodes) needs are online on "
                                    f"work pool {pool} after {timeout_s:.0f} s: start one on each machine "
                                    f"(`gptpipe worker --pool {pool} --limit 1`), or raise flow.worker_timeout_s")
                raise UserError(f"no worker on work pool {pool} after {timeout_s:.0f} s: start one in a checkout on "
                                f"that machine (`gptpipe worker --pool {pool}`), or raise flow.worker_timeout_s")
            if not said:
                log.warning(f"waiting up to {timeout_s:.0f} s for {need} worker(s) on pool {pool}")
                said = True
            time.sleep(1)


def run_name(stage: str, node: int) -> str:
    return f"{stage}-node{node}" if node else stage


def create_child(c, deployment_id, *, parent, key: str, **kw):
    """A flow run of the deployment, child of task run `parent`. The server writes a task run from the events its
    client sends, so under load the child can name a parent not written yet: a 409 (foreign key failed), seen
    once in the distributed test. Asked again each second for PARENT_WAIT_S; the idempotency key makes it safe."""
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        try:
            return c.create_flow_run_from_deployment(deployment_id, parent_task_run_id=parent, idempotency_key=key,
                                                     **kw)
        except PrefectHTTPStatusError as e:
            if e.response.status_code != 409 or time.monotonic() > deadline:
                raise
            time.sleep(1)


@task(task_run_name="{name}", cache_policy=NO_CACHE, retry_condition_fn=repro.worth_retrying)
def dispatch(name: str, deployment: str, pool: str, parameters: dict, env: dict, timeout_s: float):
    """Start the stage's child flow run (named `name`) on its pool and wait for it; its state becomes this task's."""
    log = get_run_logger()
    stage = parameters["stage"]
    with get_client(sync_client=True) as c:
        d = c.read_deployment_by_name(deployment)
        me = TaskRunContext.get().task_run
        # Keyed to this try: when the server is slow to answer, the client sends the request again, and without the
        # key that made a second run of the stage (the first ran it, the one watched here found it done: "skipped").
        run = create_child(c, d.id, parent=me.id, key=f"{me.id}-{me.run_count}", parameters=parameters, name=name,
                           job_variables={"env": env})
        log.info(f"{name}: flow run {run.name} ({run.id}) on {deployment}, pool {pool}")
        deadline, seen, touched = time.monotonic() + timeout_s, None, None
        while not (state := (now := c.read_flow_run(run.id)).state).is_final():
            # Each step (scheduled, taken by a worker, running) gets timeout_s; running, as long as its worker is
            # there or the child itself touched its run since the last look (`beating`).
            beat, touched = now.updated != touched, now.updated
            if state.type != seen or (state.is_running() and (beat or runner_online(c, pool, now.tags))):
                deadline, seen = time.monotonic() + timeout_s, state.type
            elif time.monotonic() > deadline:  # nobody took it or started it, or the worker running it died
                running = state.is_running()
                why = (f"stage {stage!r}: " + (f"the worker running it on pool {pool} has been offline, and the run "
                       f"silent, for {timeout_s:.0f} s (marked crashed)" if running
                       else f"no worker of pool {pool} {'started' if state.is_pending() else 'took'} it within "
                            f"{timeout_s:.0f} s")
                       + f": start one (`gptpipe worker --pool {pool}` in a checkout on that machine) and run again, "
                       "or raise flow.worker_timeout_s")
                c.set_flow_run_state(run.id, Crashed(message=why) if running else Cancelled(message=why), force=True)
                log.error(why)
                return Failed(message=why, data=ChildFailed(stage, why, retry=False))
            time.sleep(1)
        if not state.is_completed():
            why = f"stage {stage!r} {state.type.value.lower()} on pool {pool} (flow run {run.name}): {state.message}"
            log.error(why)
            return Failed(message=why, data=ChildFailed(stage, why, retry=state.name != BAD_INPUT))
        found = c.read_artifacts(artifact_filter=_artifact_filter(run.id))
    info = json.loads(re.search(r"```json\n(.*)\n```", found[0].data, re.S).group(1))
    said = f"{name}: {OUTCOMES[state.name]} on pool {pool} by {info['worker']} in {info['workspace']}"
    log.info(said)
    return Completed(name=state.name, message=said, data=info)


def _artifact_filter(flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    return ArtifactFilter(key=ArtifactFilterKey(like_="dvc-lock-"), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))


def run(ws: Path, settings: Flow, resources: Resources, graph: dict, chosen: list[str], forced: set[str],
        profile: str | None, wait: bool, holder: str, log) -> dict[str, str]:
    """The pipeline with every stage on a worker of its pool; {stage: ran | skipped | restored}."""
    targets = preflight(ws, settings, resources, graph, chosen, log)
    results: dict[str, str] = {}
    with workspace_lock(ws, holder, settings.lock_timeout_s if wait else 0, on_wait=log.warning, name=DISPATCH_LOCK):
        if profile:
            repro.use_profile(ws, profile, log=log.info)
        ledger, made = remote.read_lock(ws), {}
        send = dispatch.with_options(retries=settings.retries, retry_delay_seconds=settings.retry_delay_s)
        try:
            for i, stage in enumerate(chosen):
                cls = resource_class(resources, stage)
                deployment, pool, env = targets[cls]
                if cls == "gpu":
                    env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(resources.gpus[stage])))}
                entries = {s: ledger[s] for s in [*graph[stage], stage] if s in ledger}
                parameters = dict(stage=stage, remote_name=settings.remote, entries=entries, force=stage in forced,
                                  profile=profile, expected=remote.fingerprint(ws), origin=str(ws))
                # A stage on N machines: N children at once, one per worker, node k's with GPTPIPE_NODE_RANK=k
                futures = [send.submit(run_name(stage, k), deployment, pool, {**parameters, "node": k},
                                       {**env, NODE_RANK: str(k)}, settings.worker_timeout_s)
                           for k in range(nodes(ws, stage))]
                for f in futures:
                    f.wait()
                states = [f.state for f in futures]
                failed = [s for s in states if s.is_failed()]
                if failed:
                    log.error(f"{stage} failed; not run: {', '.join(chosen[i + 1:]) or 'none'}")
                info = (failed or states)[0].result()  # re-raises the child's error: the flow run fails with it
                ledger[stage] = made[stage] = info["lock"]
                results[stage] = info["outcome"]
        finally:  # what the children made is recorded here, even when one failed: the next run hands it on
            with workspace_lock(ws, holder, settings.lock_timeout_s):
                remote.write_lock(ws, made)
    return results


# ---------------------------------------------------------------- the child: one stage in a worker's checkout
@contextmanager
def beating(run_id, tags: list[str], every_s: float):
    """While the block runs, touch this flow run every `every_s` seconds (at most 30): its `updated` time moves,
    which tells the parent the child lives even when its worker shows offline. A live worker can: under load its
    heartbeats fail to land (the server's SQLite "database is locked": 31 of them in one suite run's distributed
    tests; once its websocket died), and a run marked crashed then cost its stage. These beats are API calls from
    the run's own process, so they stop with it; one that fails is sent again at the next."""
    stop = threading.Event()

    def beat():
        with get_client(sync_client=True) as c:
            while not stop.wait(min(every_s, 30)):
                try:
                    c.update_flow_run(run_id, tags=tags)
                except Exception:  # a busy server: the parent waits for four beats
                    pass

    thread = threading.Thread(target=beat, name="gptpipe-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def child_name() -> str:
    from prefect.runtime import flow_run

    return run_name(flow_run.parameters["stage"], flow_run.parameters.get("node", 0))


@flow(name="speedrun-stage", flow_run_name=child_name)
def speedrun_stage(stage: str, remote_name: str, entries: dict, expected: dict, origin: str, force: bool = False,
                   profile: str | None = None, node: int = 0):
    """One stage in this worker's checkout: dvc.lock entries in, inputs pulled, `dvc repro -s`, outputs pushed.
    Node `node` > 0 of a stage on several machines only pulls its inputs and runs its part (remote.join)."""
    from flows.speedrun import PUBLISH, flow_settings, holder_line

    from prefect.runtime import flow_run

    log = get_run_logger()
    ws = CHECKOUT
    worker = os.environ.get("PREFECT__WORKER_NAME", "no worker")
    tags = [*flow_run.tags, WORKER_TAG + worker]
    with get_client(sync_client=True) as c:  # who runs this: the parent watches that worker, not just the pool
        c.update_flow_run(flow_run.id, tags=tags)
    try:
        settings = flow_settings(ws)
        with (beating(flow_run.id, tags, settings.worker_timeout_s / 4),
              workspace_lock(ws, holder_line(), settings.lock_timeout_s, on_wait=log.warning)):
            if profile:
                repro.use_profile(ws, profile, log=log.info)
            remote.check_same(ws, expected, origin)
            t0, spent, say = time.perf_counter(), {}, repro.by_level(log)
            if node:  # one more machine of a multi-node stage: node 0's child records and pushes what it makes
                outcome, lock = remote.join(ws, stage, node, force, remote_name, entries, log=say, spent=spent), None
            else:
                outcome = remote.repro_shared(ws, stage, force, remote_name, entries, log=say, spent=spent)
                lock = remote.read_lock(ws)[stage]
    except (UserError, repro.StageFailed) as e:
        log.error(str(e))
        bad = isinstance(e, UserError) or getattr(e, "bad_input", False)
        return Failed(name=BAD_INPUT if bad else "Failed", message=str(e))
    info = {"stage": stage, "outcome": outcome, "workspace": str(ws), "worker": worker, "seconds": spent, "lock": lock}
    create_markdown_artifact(f"`{stage}` {outcome} in `{ws}` by {worker}\n\n```json\n{json.dumps(info, indent=1)}\n```",
                             key=f"dvc-lock-{re.sub(r'[^a-z0-9-]', '-', stage.lower())}",
                             description=f"{stage}'s dvc.lock entry, for the stages that read from it")
    if stage in PUBLISH:
        PUBLISH[stage](ws)
    return Completed(name=STATE_NAMES[outcome], message=f"{stage}: {outcome} in {time.perf_counter() - t0:.1f} s, "
                                                        f"{ws} ({worker})")

