"""One pipeline per workspace: an exclusive lock that a second flow run waits on, then gives up on.

Two `dvc repro` on one workspace fail (`'X' is busy`) or race on dvc.lock and params.yaml, so a flow run holds
this lock from before it edits params.yaml (a profile) until its last stage is done. It is a kernel lock
(flock) on a file in the workspace, not a marker: it follows the workspace whatever path or process reaches
it, needs no server, and is released when the holder exits however it dies, so a crashed run never leaves
the workspace locked. The file holds a line naming the holder, for the message the waiting run gives.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from gptpipe.errors import UserError

LOCK = ".dvc/tmp/gptpipe-flow.lock"  # in DVC's own git-ignored scratch folder


class WorkspaceBusy(UserError):
    pass


def holder(ws: Path) -> str:
    """Who holds the workspace now ('' when nobody does)."""
    try:
        return (ws / LOCK).read_text().strip()
    except FileNotFoundError:
        return ""


@contextmanager
def workspace_lock(ws: Path, owner: str, timeout_s: float, on_wait: Callable[[str], None] = print,
                   poll_s: float = 0.5, name: str = LOCK):
    """Hold the workspace for the block; wait up to `timeout_s` for a run that holds it (0: fail at once)."""
    path = ws / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                other = f.read().strip() or "another flow run"
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"workspace {ws} is busy: {other} is running its pipeline. "
                        + ("Run again when it is done, or let this run wait for it (drop --no-wait / wait=false)"
                           if timeout_s == 0 else f"Gave up after {timeout_s:.0f} s (flow.lock_timeout_s in "
                           "params.yaml): run again when it is done, or raise the limit")) from None
                if not waited:
                    on_wait(f"workspace {ws} is busy: {other}; waiting up to {timeout_s:.0f} s for it")
                    waited = True
                time.sleep(poll_s)
        f.seek(0)
        f.truncate()
        f.write(owner + "\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # before unlocking, so nobody reads a finished run as the holder
            fcntl.flock(f, fcntl.LOCK_UN)
