"""The Prefect speedrun flow on the micro profile, against a real `prefect server start` on 127.0.0.1.

The session's one server and its one micro build (tests/conftest.py: the first flow run, from scratch) serve
the module, which works on its own copy of that workspace (its tests run in file order and build on each
other): the flow runs in this process, from the CLI, and as a deployment that a process worker picks up.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, sh, stop, wait_for

pytestmark = pytest.mark.e2e
sys.path.insert(0, str(REPO))  # flows/ lives in the checkout, beside the installed gptpipe package


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ws(micro_built, tmp_path_factory):
    """A copy of the session's built micro workspace (flows/ included: the deployment's worker runs its code)."""
    ws = tmp_path_factory.mktemp("flows") / "ws"
    shutil.copytree(micro_built[0], ws, symlinks=True)
    return ws


@pytest.fixture(scope="module")
def built(micro_built, ws):
    """This module's workspace, and the state of the flow run that built the session's workspace from scratch."""
    return ws, micro_built[1]


# ---------------------------------------------------------------- helpers
def client():
    from prefect import get_client

    return get_client(sync_client=True)


def graph(ws: Path) -> dict[str, list[str]]:
    from flows.repro import read_graph

    return read_graph(ws)


def downstream(g: dict[str, list[str]], stage: str) -> list[str]:
    """The stage and every stage that reads from it, directly or not, in graph order."""
    hit = {stage}
    for s, ups in g.items():
        if hit & set(ups):
            hit.add(s)
    return [s for s in g if s in hit]


def task_runs(flow_run_id, n: int) -> dict:
    """{task name: task run} of a flow run, once the server has recorded `n` of them."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read():
        with client() as c:
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return len(runs) >= n and all(r.state and r.state.is_final() for r in runs) and {r.name: r for r in runs}

    return wait_for(f"{n} task runs of flow run {flow_run_id}", read, timeout=30)


def logs(flow_run_id, must_have: str) -> list[str]:
    """Every log line of a flow run (its tasks' included), once one of them contains `must_have`."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what this process logged so far

    def read():
        lines, offset = [], 0
        with client() as c:
            while batch := c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                       limit=200, offset=offset):
                lines += [f"{r.level} {r.message}" for r in batch]
                offset += len(batch)
        return any(must_have in line for line in lines) and lines

    return wait_for(f"a log line with {must_have!r}", read, timeout=30)


def artifact(key: str, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with client() as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                                                                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert found, f"no artifact {key!r} from flow run {flow_run_id}"
    return found[0]


def ran(out: str) -> list[str]:
    return re.findall(r"Running stage '([\w@:./-]+)'", out)


def leftovers(ws: Path) -> list[Path]:
    return [p for p in ws.glob("**/.*.tmp-*") if ".git" not in p.parts]


# ---------------------------------------------------------------- in-process flow runs
def test_flow_runs_every_stage_as_a_task(built, micro_built):
    ws, state = built
    g = graph(ws)
    assert state.is_completed(), state.message
    assert state.result() == {s: "ran" for s in g}
    runs = task_runs(state.state_details.flow_run_id, len(g))
    assert sorted(runs) == sorted(g) and {r.state.type.value for r in runs.values()} == {"COMPLETED"}

    lines = logs(state.state_details.flow_run_id, "report: ran in")
    for stage in g:  # DVC's lines, streamed into the stage's task (the stage's own: test_a_transient_failure...)
        assert any(f"Running stage '{stage}'" in line for line in lines), stage

    table = artifact("gptpipe-eval", state.state_details.flow_run_id)
    rows = json.loads(table.data)
    assert table.type == "table" and {"model", "task", "metric", "value", "n", "stderr"} <= set(rows[0])
    assert any(r["metric"] == "bpb" for r in rows)
    card = artifact("gptpipe-report", state.state_details.flow_run_id)
    assert card.type == "markdown" and str(micro_built[0] / "reports" / "index.html") in card.data
    assert (ws / "reports" / "report.md").read_text() in card.data
    assert "up to date" in sh([sys.executable, "-m", "dvc", "status"], ws).stdout


def test_second_run_is_all_skipped_by_dvc(built):
    from flows.speedrun import speedrun

    ws, _ = built
    state = speedrun(workspace=str(ws), return_state=True)
    g = graph(ws)
    assert state.is_completed() and state.result() == {s: "skipped" for s in g}
    runs = task_runs(state.state_details.flow_run_id, len(g))
    assert {(r.state.type.value, r.state.name) for r in runs.values()} == {("COMPLETED", "Skipped")}


def test_dry_run_then_one_param_reruns_only_what_it_touches(built):
    from flows.speedrun import speedrun
    from gptpipe import profile

    ws, _ = built
    g = graph(ws)
    before = {f: (ws / f).read_bytes() for f in ("params.yaml", "dvc.lock")}
    plan = speedrun(workspace=str(ws), profile="gpu-1x", dry_run=True)  # what a switch to the GPU profile reruns
    assert plan["pretrain"] == "would run" and plan["report"] == "would run"
    assert {f: (ws / f).read_bytes() for f in before} == before, "a dry run changed the workspace"

    profile.set_values(["evaluate.max_new_tokens=9"], ws / "params.yaml")
    touched = downstream(g, "evaluate")
    assert speedrun(workspace=str(ws), dry_run=True) == {s: "would run" if s in touched else "up to date" for s in g}
    assert speedrun(workspace=str(ws)) == {s: "ran" if s in touched else "skipped" for s in g}


def test_failing_stage_fails_the_flow_with_its_error_and_keeps_outputs(built):
    from flows.speedrun import speedrun

    ws, _ = built
    keep = {f: (ws / f).read_bytes() for f in ("dvc.lock", "reports/eval/base.json", "params.yaml")}
    (ws / "params.yaml").write_text(keep["params.yaml"].decode().replace("top_p: 0.95", "top_p: 2"))
    try:
        state = speedrun(workspace=str(ws), return_state=True)
    finally:
        (ws / "params.yaml").write_bytes(keep["params.yaml"])
    assert state.is_failed() and "evaluate.top_p" in state.message and "Traceback" not in state.message
    fid = state.state_details.flow_run_id
    lines = logs(fid, "evaluate failed; not run")
    assert any(line.startswith("40 ") and "evaluate.top_p" in line for line in lines)  # at ERROR level
    started = [line for line in lines if re.match(r"\d+ Running stage 'evaluate'", line)]  # not the error's copy
    assert len(started) == 1  # bad input: not retried (retries: 1)
    g = graph(ws)
    runs = task_runs(fid, list(g).index("evaluate") + 1)
    assert runs["evaluate"].state.is_failed() and not set(downstream(g, "evaluate")[1:]) & set(runs)
    assert {f: (ws / f).read_bytes() for f in keep if f != "params.yaml"} == {f: keep[f] for f in keep if f != "params.yaml"}
    assert not leftovers(ws), "a failed stage left a half-written output"


def test_a_transient_failure_is_retried(built):
    from flows.speedrun import speedrun

    ws, _ = built
    script = ws / "stages" / "report.py"
    code = script.read_text()
    # Fail once, the way a lost node would (exit 3, not our bad-input 2), then behave.
    script.write_text("import pathlib, sys\nprint('report: attempt', flush=True)\n"
                      "if pathlib.Path('fail-once').exists():\n"
                      "    pathlib.Path('fail-once').unlink(); sys.exit(3)\n" + code)
    (ws / "fail-once").touch()
    try:
        state = speedrun(workspace=str(ws), stages=["report"], return_state=True)
    finally:
        script.write_text(code)
    assert state.is_completed(), state.message
    assert state.result() == {"report": "ran"}
    lines = logs(state.state_details.flow_run_id, "report: ran in")
    assert sum(bool(re.match(r"\d+ Running stage 'report'", line)) for line in lines) == 2
    assert sum(line.endswith("report: attempt") for line in lines) == 2  # the stage's own output, streamed


def test_bad_input_is_refused_in_one_line(built):
    ws, _ = built
    cases = [(["--stage", "nope"], "unknown stage 'nope'"), (["--workspace", str(ws / "nope")], "no dvc.yaml"),
             (["--profile", "nope"], "profile 'nope' not found"), (["--stage", "report", "--force", "pretrain"],
                                                                     "not among the stages to run")]
    for args, words in cases:
        r = sh([sys.executable, "-m", "gptpipe.cli", "flow", "run", "--workspace", str(ws), *args], REPO, check=False)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- two runs, one workspace
def test_two_runs_on_one_workspace(built, prefect_server, prefect_env, tmp_path):
    from flows.lock import holder

    ws, _ = built
    lock_before = (ws / "dvc.lock").read_text()

    def flow_run(*args, out: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "gptpipe.cli", "flow", "run", "--workspace", str(ws), *args],
                                cwd=REPO, env=prefect_env, stdout=open(tmp_path / out, "w"), stderr=subprocess.STDOUT)

    first = flow_run("--force", "report", out="first.log")
    wait_for("the first run to hold the workspace", lambda: first.poll() is not None or holder(ws), timeout=90)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    waiter, refused = flow_run(out="waiter.log"), flow_run("--no-wait", out="refused.log")
    assert refused.wait(120) == 2, (tmp_path / "refused.log").read_text()[-3000:]
    said = (tmp_path / "refused.log").read_text().strip().splitlines()[-1]
    assert said.startswith("error [gptpipe]: workspace") and "is busy: flow run '" in said and "--no-wait" in said
    assert first.wait(300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert waiter.wait(300) == 0, (tmp_path / "waiter.log").read_text()[-3000:]
    waited = (tmp_path / "waiter.log").read_text()
    assert "is busy" in waited and "waiting up to" in waited
    assert ran((tmp_path / "first.log").read_text()) == ["report"]
    assert ran(waited) == [], "the waiting run started while the first one still held the workspace"
    assert yaml.safe_load((ws / "dvc.lock").read_text())["stages"].keys() == yaml.safe_load(lock_before)["stages"].keys()
    assert "up to date" in sh([sys.executable, "-m", "dvc", "status"], ws).stdout
    assert not holder(ws)


# ---------------------------------------------------------------- deployments on a worker
def test_deployment_runs_on_a_process_worker(built, prefect_server, prefect_env, tmp_path):
    import duckdb
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.workers.process import ProcessWorker

    ws, _ = built
    with client() as c:  # what `prefect work-pool create NAME --type process` does
        for pool in ("gptpipe-cpu", "gptpipe-gpu"):
            c.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                              base_job_template=ProcessWorker.get_default_base_job_template()))
    sh([sys.executable, "-m", "gptpipe.cli", "deploy"], ws, env=prefect_env)
    with client() as c:
        nightly = c.read_deployment_by_name("speedrun/nightly")
        gpu = c.read_deployment_by_name("speedrun/gpu")
    assert gpu.parameters == {"profile": "gpu-1x"} and gpu.job_variables["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpu.job_variables["working_dir"] == str(ws) and gpu.pull_steps[0][
        "prefect.deployments.steps.set_working_directory"]["directory"] == str(ws)

    def scheduled():
        with client() as c:
            return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])))
    runs = wait_for("the cron schedule to make runs", scheduled, timeout=60)
    assert all(r.state.is_scheduled() and (r.expected_start_time.hour, r.expected_start_time.minute) == (3, 0)
               for r in runs)

    def count() -> int:  # closed at once: an open reader would lock the report stage out of the file
        con = duckdb.connect(str(ws / "reports" / "gptpipe.duckdb"), read_only=True)
        try:
            return con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
        finally:
            con.close()

    before = count()
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "gptpipe.cli", "worker", "--pool", "gptpipe-cpu"], cwd=ws,
                              env=prefect_env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        r = sh([sys.executable, "-m", "prefect", "deployment", "run", "speedrun/nightly",
                "--param", 'force=["report"]'], ws, env=prefect_env)
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)

        def final():
            with client() as c:
                s = c.read_flow_run(run_id).state
            return s if s.is_final() else None
        state = wait_for("the deployment run to finish", final, timeout=240, every=1)
        assert state.is_completed(), f"{state}\n{log.read_text()[-4000:]}"
        assert "Beginning flow run" in log.read_text()  # the worker ran it
    finally:
        stop(worker)
    assert count() == before + 1


def test_a_child_run_waits_for_its_parent_task_run(prefect_server):
    """The server writes a task run from its client's events: a child flow run created before its parent is written
    gets a 409, and dispatch asks again until the parent is there."""
    import threading
    import uuid

    from prefect import get_client, task
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.dispatch import create_child

    @task
    def parent_task():
        pass

    with get_client(sync_client=True) as c:
        deployment = c.create_deployment(c.create_flow_from_name("parent-race"), "parent-race")
        with pytest.raises(PrefectHTTPStatusError, match="409"):
            c.create_flow_run_from_deployment(deployment, parent_task_run_id=uuid.uuid4())
        parent = uuid.uuid4()

        def write_parent():
            with get_client(sync_client=True) as late:
                late.create_task_run(parent_task, None, "0", id=parent)

        threading.Timer(2, write_parent).start()
        child = create_child(c, deployment, parent=parent, key=f"{parent}-1", name="child")
    assert child.parent_task_run_id == parent
