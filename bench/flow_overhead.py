"""Orchestration overhead: the Prefect speedrun flow vs plain `dvc repro` on the micro profile.

    python bench/flow_overhead.py

Builds two fresh micro workspaces in a temporary folder, starts `prefect server start` on 127.0.0.1, then
times, each as the command a user types: a full build (`dvc repro` vs `gptpipe flow run`) and a no-op run
on the built workspace (everything up to date).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_workspace  # noqa: E402  (the tests' workspace builder: a git + DVC copy of the repo)


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false")
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
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
            plain, flowed = make_workspace(tmp / "plain"), make_workspace(tmp / "flow")
            dvc = [sys.executable, "-m", "dvc", "repro"]
            flow = [sys.executable, "-m", "gptpipe.cli", "flow", "run", "--workspace"]
            rows = [("full build", timed(dvc, plain, env), timed([*flow, str(flowed)], REPO, env)),
                    ("no-op (up to date)", timed(dvc, plain, env), timed([*flow, str(flowed)], REPO, env))]
        finally:
            server.terminate()
            server.wait(30)
    print(f"{'micro profile':<20} {'dvc repro':>10} {'flow':>10} {'overhead':>10} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:<20} {a:>9.1f}s {b:>9.1f}s {b - a:>+9.1f}s {b / a:>6.2f}x")


if __name__ == "__main__":
    main()
