"""The speedrun across machines, all on 127.0.0.1: the session's Prefect server, two process workers in two git
clones (pool gptpipe-cpu in one, gptpipe-gpu in the other; the "gpu" worker runs on CPU here), and a
local-directory DVC remote. The micro pipeline is built once (`fleet`), from scratch, by the speedrun flow with
flow.remote set; the tests run in file order and build on each other, like tests/e2e/test_flows.py. A third clone
with a second gpu-pool worker joins for a two-node pretrain, and stays for the killed-worker test.
"""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, make_workspace, sh, stop, wait_for

pytestmark = pytest.mark.e2e
sys.path.insert(0, str(REPO))  # flows/ lives in the checkout, beside the installed gptpipe package
POOLS = ("gptpipe-cpu", "gptpipe-gpu")


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def git(ws: Path, *args: str):
    return sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], ws)


def dvc(ws: Path, *args: str):
    return sh([sys.executable, "-m", "dvc", *args], ws)


def start_worker(clone: Path, pool: str, env: dict, log: Path) -> subprocess.Popen:
    env = dict(env, PREFECT_WORKER_HEARTBEAT_SECONDS="2")  # a dead worker shows offline after 3 missed: 6 s
    # --limit 1: one run at a time, as on a box that is one node of a multi-node stage
    return subprocess.Popen([sys.executable, "-m", "gptpipe.cli", "worker", "--pool", pool, "--limit", "1"], cwd=clone, env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def worker_online(pool: str) -> bool:
    with client() as c:
        return any(w.status.value == "ONLINE" for w in c.read_workers_for_work_pool(pool))


def child_runs(since) -> list:
    """The stage deployments' flow runs created after `since`, oldest first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    with client() as c:
        return c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["speedrun-stage"])),
                                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                                sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def children(since) -> dict:
    """{stage: its latest child flow run} among those created after `since`."""
    return {r.name: r for r in child_runs(since)}


def record(run) -> dict:
    """What the child says it did ({stage, outcome, workspace, worker, seconds, lock}), from its artifact."""
    import json

    from flows.dispatch import _artifact_filter

    with client() as c:
        data = c.read_artifacts(artifact_filter=_artifact_filter(run.id))[0].data
    return json.loads(re.search(r"```json\n(.*)\n```", data, re.S).group(1))


def where(run) -> str:
    """The checkout the child ran in."""
    return record(run)["workspace"]


@contextmanager
def edited(ws: Path, *sets: str):
    from gptpipe import profile

    before = (ws / "params.yaml").read_bytes()
    profile.set_values(list(sets), ws / "params.yaml")
    try:
        yield
    finally:
        (ws / "params.yaml").write_bytes(before)


def store_is_whole(store: Path) -> None:
    """Every object in the remote is complete: content-addressed, so its md5 is its name; no temporary files."""
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files and not [p for p in files if "tmp" in p.name], files
    for p in files:
        if not p.name.endswith(".dir"):
            assert hashlib.md5(p.read_bytes()).hexdigest() == p.parent.name + p.name, f"partial object {p}"


# ---------------------------------------------------------------- the fleet: origin, remote, two clones, workers
@pytest.fixture(scope="module")
def fleet(prefect_server, prefect_env, tmp_path_factory):
    """(origin, cpu clone, gpu clone, store, {pool: worker process}); only the cpu worker runs at first."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    root = tmp_path_factory.mktemp("distributed")
    store = root / "store"
    store.mkdir()
    # 180 s: under the suite's load the server's SQLite can refuse writes for up to 60 s ("database is locked"), the
    # children's beats too (dispatch.beating). Tests of the timeout set their own.
    origin = make_workspace(root / "origin", sets=("flow.retries=0", "flow.retry_delay_s=0", "flow.remote=store",
                                                   "flow.worker_timeout_s=180"))
    sh(["cp", "-r", str(REPO / "flows"), str(origin)], root)
    sh(["rm", "-rf", str(origin / "flows" / "__pycache__")], root)
    dvc(origin, "remote", "add", "-d", "store", str(store))
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "flows and the remote")
    cpu, gpu = root / "cpu", root / "gpu"
    for clone in (cpu, gpu):
        git(root, "clone", "-q", str(origin), str(clone))
    with client() as c:  # `prefect work-pool create NAME --type process`
        for pool in POOLS:
            c.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                              base_job_template=ProcessWorker.get_default_base_job_template()))
    workers = {"gptpipe-cpu": start_worker(cpu, "gptpipe-cpu", prefect_env, root / "cpu-worker.log")}
    try:
        yield origin, cpu, gpu, store, workers, root
    finally:
        for w in workers.values():
            stop(w)
        with client() as c:  # the next module creates them again
            for pool in POOLS:
                c.delete_work_pool(pool)


@pytest.fixture(scope="module")
def built(fleet, prefect_env):
    """The micro pipeline built from scratch across the two workers: (the flow run's state, when it started)."""
    from flows.speedrun import speedrun

    origin, cpu, gpu, store, workers, root = fleet
    sh([sys.executable, "-m", "gptpipe.cli", "deploy"], cpu, env=prefect_env)  # idempotent: bad-input test did it
    workers["gptpipe-gpu"] = start_worker(gpu, "gptpipe-gpu", prefect_env, root / "gpu-worker.log")
    since = datetime.now(timezone.utc)
    return speedrun(workspace=str(cpu), return_state=True), since


# ---------------------------------------------------------------- tests, in order
def test_bad_input_is_refused_before_any_work(fleet, prefect_env):
    from flows.speedrun import speedrun

    origin, cpu, gpu, store, workers, root = fleet
    lock_before = (cpu / "dvc.lock").exists()

    def refused(**kw) -> str:
        state = speedrun(workspace=str(cpu), return_state=True, **kw)
        assert state.is_failed() and "\n" not in state.message and "Traceback" not in state.message, state.message
        return state.message

    with edited(cpu, "flow.remote=nope"):
        said = refused()
    assert "flow.remote: 'nope' is not a DVC remote" in said and "dvc remote add" in said
    said = refused()  # nothing deployed yet
    assert "deployment speedrun-stage/cpu does not exist" in said and "gptpipe deploy" in said
    sh([sys.executable, "-m", "gptpipe.cli", "deploy"], cpu, env=prefect_env)
    with edited(cpu, "resources.gpus={pretrian: 1}"):
        said = refused()
    assert "resources.gpus" in said and "pretrian" in said
    with edited(cpu, "flow.worker_timeout_s=3"):
        said = refused(stages=["pretrain"])  # its pool, gptpipe-gpu, has no worker yet
    assert "no worker on work pool gptpipe-gpu after 3 s" in said and "gptpipe worker --pool gptpipe-gpu" in said
    assert (cpu / "dvc.lock").exists() == lock_before and not any(store.iterdir()), "bad input did some work"


def test_stages_run_on_the_pool_of_their_resource_class(built, fleet):
    from flows.repro import read_graph
    from gptpipe.config import load_params

    origin, cpu, gpu, store, workers, root = fleet
    state, since = built
    assert state.is_completed(), state.message
    g = read_graph(cpu)
    assert state.result() == {s: "ran" for s in g}
    gpus = load_params(cpu / "params.yaml").resources.gpus
    runs = children(since)
    assert sorted(r.name for r in child_runs(since)) == sorted(g)  # each stage once, none started twice
    for stage, run in runs.items():  # Prefect's own record of where each stage ran
        pool, clone = ("gptpipe-gpu", gpu) if stage in gpus else ("gptpipe-cpu", cpu)
        assert (run.work_pool_name, run.state.name, where(run)) == (pool, "Ran", str(clone)), stage
    assert (cpu / "reports" / "index.html").is_file() and "bits/byte" in (cpu / "reports" / "report.md").read_text()
    assert not (gpu / "reports" / "index.html").exists()
    assert set(yaml.safe_load((cpu / "dvc.lock").read_text())["stages"]) == set(g)  # the whole record, here
    store_is_whole(store)


def test_second_run_restores_or_skips(built, fleet):
    """Nothing changed, so each child finds its stage computed. A chain that crosses the pools both ways, not all
    fourteen stages (a child flow run costs ~10 s even when it does nothing); the next test checks every stage's
    dvc.lock entry."""
    from flows.speedrun import speedrun

    origin, cpu, gpu, store, workers, root = fleet
    chain = ["tokenize", "pretrain", "pairs", "dpo", "report"]  # cpu, gpu, cpu, gpu, cpu
    state = speedrun(workspace=str(cpu), stages=chain, return_state=True)
    assert state.is_completed(), state.message
    assert list(state.result()) == chain and set(state.result().values()) <= {"skipped", "restored"}, state.result()


def test_a_fresh_clone_with_the_remote_has_nothing_to_run(built, fleet):
    origin, cpu, gpu, store, workers, root = fleet
    git(cpu, "add", "dvc.lock")  # dvc.lock is the index of what the remote holds: it travels by git
    git(cpu, "commit", "-qm", "the pipeline's dvc.lock")
    fresh = root / "fresh"
    git(root, "clone", "-q", str(cpu), str(fresh))
    dvc(fresh, "pull")
    out = dvc(fresh, "repro").stdout
    assert "Running stage" not in out and "Data and pipelines are up to date" in out, out
    assert (fresh / "reports" / "report.md").read_bytes() == (cpu / "reports" / "report.md").read_bytes()


def test_pretrain_on_two_machines_one_child_run_per_node(built, fleet, prefect_env):
    """pretrain.nnodes 2: the flow starts two children on the gpu pool at once, each taken by its own worker (--limit 1)
    in its own clone; node 1's child pulls the inputs and joins node 0's rendezvous, node 0's records and pushes."""
    from flows.speedrun import speedrun

    origin, cpu, gpu, store, workers, root = fleet
    gpu2 = root / "gpu2"
    git(root, "clone", "-q", str(origin), str(gpu2))
    sets = ("pretrain.nnodes=2", "pretrain.total_batch_tokens=1024", "pretrain.rdzv_timeout_s=60",
            f"pretrain.rdzv_endpoint=127.0.0.1:{free_port()}")
    since = datetime.now(timezone.utc)
    with edited(cpu, *sets), edited(gpu, *sets), edited(gpu2, *sets):  # the children check: same params everywhere
        with edited(cpu, "flow.worker_timeout_s=3"):
            state = speedrun(workspace=str(cpu), stages=["pretrain"], return_state=True)
        assert state.is_failed() and "1 of the 2 workers a stage on 2 machines (nnodes) needs" in state.message, state.message
        workers["gpu2"] = start_worker(gpu2, "gptpipe-gpu", prefect_env, root / "gpu2-worker.log")
        state = speedrun(workspace=str(cpu), stages=["pretrain"], return_state=True)
        assert state.is_completed(), state.message
        assert state.result() == {"pretrain": "ran"}  # nnodes is a pretrain param: DVC reruns it
        runs = children(since)
        assert sorted(runs) == ["pretrain", "pretrain-node1"]
        node0, node1 = record(runs["pretrain"]), record(runs["pretrain-node1"])
        assert {node0["workspace"], node1["workspace"]} == {str(gpu), str(gpu2)}, "both nodes on one worker"
        assert (node0["outcome"], node1["outcome"], node1["lock"]) == ("ran", "ran", None)
        lock = yaml.safe_load((cpu / "dvc.lock").read_text())["stages"]["pretrain"]
        assert lock == node0["lock"] and lock["params"]["params.yaml"]["pretrain"]["nnodes"] == 2
        assert "up to date" in dvc(Path(node0["workspace"]), "status", "pretrain").stdout  # node 0 wrote the outputs
        store_is_whole(store)
        again = speedrun(workspace=str(cpu), stages=["pretrain"], return_state=True)  # computed: no node runs it
        assert again.is_completed() and again.result()["pretrain"] in ("skipped", "restored"), again.result()
        assert record(children(since)["pretrain-node1"])["outcome"] == "skipped"


def pretrain_on_a_gpu_worker(cpu: Path, gpus: dict, env: dict, log: Path) -> tuple[subprocess.Popen, Path]:
    """`gptpipe flow run --force pretrain` in the background, returned once the stage trains on a gpu-pool worker:
    (the flow run's process, the clone it trains in: the one holding the stage's temporary output)."""
    parent = subprocess.Popen([sys.executable, "-m", "gptpipe.cli", "flow", "run", "--workspace", str(cpu),
                               "--stage", "pretrain", "--force", "pretrain"], cwd=cpu, env=env,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    busy = wait_for("pretrain to start on a gpu worker", lambda: parent.poll() is not None or next(
        (c for c in gpus if list((c / "models").glob(".base.tmp-*"))), None), timeout=180, every=0.2)
    assert parent.poll() is None, log.read_text()[-3000:]
    return parent, busy


def test_a_worker_killed_mid_stage(built, fleet, prefect_env):
    origin, cpu, gpu, store, workers, root = fleet
    gpus = {gpu: "gptpipe-gpu", root / "gpu2": "gpu2"}  # two workers on the gpu pool now: it runs on one of them
    locks = {c: yaml.safe_load((c / "dvc.lock").read_text()) for c in (cpu, *gpus)}
    since = datetime.now(timezone.utc)
    log = root / "killed-run.log"
    # Every clone has the same params (the children check): a short wait for a worker of the pool, for the kill
    # (10 s once timed out before a worker on the loaded machine had started the child).
    with ExitStack() as stack:
        for c in (cpu, *gpus):
            stack.enter_context(edited(c, "flow.worker_timeout_s=20"))
        parent, busy = pretrain_on_a_gpu_worker(cpu, gpus, prefect_env, log)
        stop(workers.pop(gpus[busy]))  # Ctrl-C to the worker and its flow runs, then SIGKILL: a box going down
        # Nobody reports the child's end, and the pool still has a worker online: the parent notices that the one
        # running the child is offline and marks it crashed.
        assert parent.wait(120) != 0, log.read_text()[-3000:]
    child = children(since)["pretrain"]
    assert child.state.is_crashed() or child.state.is_failed(), child.state
    assert "the worker running it on pool gptpipe-gpu has been offline" in log.read_text() or child.state.is_failed(), \
        log.read_text()[-3000:]
    for c, before in locks.items():
        assert yaml.safe_load((c / "dvc.lock").read_text()) == before, f"dvc.lock of {c} changed"
    assert not [p for p in (busy / "models").iterdir() if ".tmp" in p.name], "a half-written model is left"
    store_is_whole(store)

    workers[gpus[busy]] = start_worker(busy, "gptpipe-gpu", prefect_env, root / f"{busy.name}-worker.log")


def test_a_worker_gone_silent_while_its_stage_runs_on(built, fleet, prefect_env):
    """Run again after the kill, and this time stop the worker (SIGSTOP) once it is training: it misses its
    heartbeats and shows offline, as live workers did under the suite's load (their heartbeats refused by the
    server's SQLite), but the flow run it started goes on and touches its run (dispatch.beating). The parent waits
    past its timeout for it, and the stage ends as if nothing had happened."""
    from flows.dispatch import runner_online

    origin, cpu, gpu, store, workers, root = fleet
    gpus = {gpu: "gptpipe-gpu", root / "gpu2": "gpu2"}
    since = datetime.now(timezone.utc)
    log, timeout = root / "silent-run.log", 12
    with ExitStack() as stack:
        for c in (cpu, *gpus):  # a pretrain (~40 s) that outlasts the worker going offline (~8 s) and the timeout
            stack.enter_context(edited(c, f"flow.worker_timeout_s={timeout}", "pretrain.tokens=819200"))
        parent, busy = pretrain_on_a_gpu_worker(cpu, gpus, prefect_env, log)
        worker = workers[gpus[busy]]
        os.kill(worker.pid, signal.SIGSTOP)  # the worker alone, not its flow run
        try:
            def offline():
                with client() as c:
                    return not runner_online(c, "gptpipe-gpu", children(since)["pretrain"].tags)

            wait_for("the stopped worker to show offline", offline, timeout=60, every=0.5)
            time.sleep(timeout + 3)
            state = children(since)["pretrain"].state  # Crashed without the beats; Completed: a test too short to tell
            assert state.is_running(), f"pretrain is not running after the parent's timeout: {state}"
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert parent.wait(300) == 0, log.read_text()[-3000:]
        assert "up to date" in dvc(busy, "status", "pretrain").stdout  # with the params it ran with
    assert re.search(r"pretrain\s+ran", log.read_text()) and "has been offline" not in log.read_text(), \
        log.read_text()[-3000:]
    assert where(children(since)["pretrain"]) == str(busy)
    store_is_whole(store)
