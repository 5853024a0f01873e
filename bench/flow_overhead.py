"""Orchestration overhead on the micro profile: plain `dvc repro`, the Prefect speedrun flow, and the same flow
across machines (flow.remote set: two process workers in two git clones, pools gptpipe-cpu and gptpipe-gpu, and a
local-directory DVC remote, all on 127.0.0.1).

    python bench/flow_overhead.py            # the three, full build and no-op
    python bench/flow_overhead.py --no-distributed   # or --no-plain: only the two flows

Builds fresh micro workspaces in a temporary folder, starts `prefect server start` on 127.0.0.1, then times each as
the command a user types. For the distributed build it also prints, per stage, the seconds of `dvc repro -s`, of
the pulls and the push around it, and of dispatch (the stage's task in the parent minus its child's work: creating
the child flow run, a worker picking it up, starting Python and Prefect there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from conftest import make_workspace  # noqa: E402  (the tests' workspace builder: a git + DVC copy of the repo)

POOLS = ("gptpipe-cpu", "gptpipe-gpu")


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd, env)
    return time.perf_counter() - t0


def fleet(tmp: Path, env: dict) -> tuple[Path, list[subprocess.Popen]]:
    """origin + a local remote + two clones, a worker on each pool, the deployments; returns the cpu clone."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    store = tmp / "store"
    store.mkdir(parents=True)
    origin = make_workspace(tmp / "origin", sets=("flow.retries=0", "flow.remote=store"))
    shutil.copytree(REPO / "flows", origin / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(store)], origin, env)
    run([*git, "add", "-A"], origin, env)
    run([*git, "commit", "-qm", "remote"], origin, env)
    workers = []
    with get_client(sync_client=True) as c:
        for pool in POOLS:
            c.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                              base_job_template=ProcessWorker.get_default_base_job_template()))
    for pool in POOLS:
        clone = tmp / pool
        run(["git", "clone", "-q", str(origin), str(clone)], tmp, env)
        workers.append(subprocess.Popen([sys.executable, "-m", "gptpipe.cli", "worker", "--pool", pool], cwd=clone,
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    run([sys.executable, "-m", "gptpipe.cli", "deploy"], tmp / "gptpipe-cpu", env)
    return tmp / "gptpipe-cpu", workers


def per_stage(since) -> list[tuple[str, float, float, float, float]]:
    """(stage, repro s, pull s, push s, dispatch s) of the distributed runs started after `since`."""
    from prefect import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime, TaskRunFilter, TaskRunFilterName)

    rows = []
    with get_client(sync_client=True) as c:
        children = [r for r in c.read_flow_runs(flow_run_filter=FlowRunFilter(
            expected_start_time=FlowRunFilterExpectedStartTime(after_=since))) if r.work_pool_name in POOLS]
        arts = {a.flow_run_id: a for a in c.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_="dvc-lock-")))}
        for child in sorted((r for r in children if r.id in arts), key=lambda r: r.expected_start_time):
            s = json.loads(re.search(r"```json\n(.*)\n```", arts[child.id].data, re.S).group(1))["seconds"]
            task = c.read_task_runs(task_run_filter=TaskRunFilter(id={"any_": [child.parent_task_run_id]}))[0]
            wall = (task.end_time - task.start_time).total_seconds()
            rows.append((child.name, s["repro"], s["pull"], s["push"], wall - sum(s.values())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-distributed", action="store_true")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain `dvc repro` column")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false",
                   PREFECT_WORKER_QUERY_SECONDS="1", DVC_NO_ANALYTICS="1", WANDB_MODE="disabled")
        os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        workers: list[subprocess.Popen] = []
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(env["PREFECT_API_URL"] + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the Prefect server did not start")
                time.sleep(0.5)
            flowed = make_workspace(tmp / "flow")
            flow = [sys.executable, "-m", "gptpipe.cli", "flow", "run", "--workspace"]
            columns = {}
            if not args.no_plain:
                plain, dvc = make_workspace(tmp / "plain"), [sys.executable, "-m", "dvc", "repro"]
                columns["dvc repro"] = [timed(dvc, plain, env), timed(dvc, plain, env)]
            columns["flow"] = [timed([*flow, str(flowed)], REPO, env), timed([*flow, str(flowed)], REPO, env)]
            if not args.no_distributed:
                from datetime import datetime, timezone

                cpu, workers = fleet(tmp / "fleet", env)
                since = datetime.now(timezone.utc)
                columns["distributed"] = [timed([*flow, str(cpu)], REPO, env)]
                stages = per_stage(since)
                columns["distributed"].append(timed([*flow, str(cpu)], REPO, env))
        finally:
            for w in workers:
                w.terminate()
                w.wait(30)
            server.terminate()
            server.wait(30)
    print(f"{'micro profile':<20}" + "".join(f"{k:>13}" for k in columns))
    for i, name in enumerate(["full build", "no-op (up to date)"]):
        print(f"{name:<20}" + "".join(f"{v[i]:>12.1f}s" for v in columns.values()))
    if not args.no_distributed:
        print(f"\ndistributed build, per stage (s){'':<4}{'repro':>8}{'pull':>8}{'push':>8}{'dispatch':>10}")
        for stage, *secs in stages:
            print(f"{stage:<36}" + "".join(f"{x:>8.1f}" for x in secs[:3]) + f"{secs[3]:>10.1f}")
        n = len(stages)
        means = [sum(r[i] for r in stages) / n for i in range(1, 5)]
        print(f"{'mean':<36}" + "".join(f"{x:>8.1f}" for x in means[:3]) + f"{means[3]:>10.1f}")


if __name__ == "__main__":
    main()
