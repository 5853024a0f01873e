"""Artifacts: atomic outputs, stage metrics, plot CSVs and the per-step run log."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from gptpipe.errors import UserError

METRICS, PLOTS, LOGS = Path("metrics"), Path("plots"), Path("logs")


def digest(*paths: str | Path, pattern: str = "*") -> str:
    """sha256 over the bytes and names of files: each path is a file, or a dir whose files matching `pattern`
    count. Bytes, not mtimes: `dvc checkout` rewrites mtimes; the reads cost about a second per GB."""
    h = hashlib.sha256()
    for root in map(Path, paths):
        for f in sorted(root.rglob(pattern)) if root.is_dir() else [root]:
            if f.is_file():
                with open(f, "rb") as fh:
                    h.update(f"{f.relative_to(root)}\0".encode() + hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary sibling of `path`; it replaces `path` only if the block succeeds.

    A killed or failing stage leaves the previous output intact (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*-*"):  # left by a killed run (DVC allows one writer)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def replacing(path: str | Path):
    """Yield a temporary sibling of the file `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, *, made_by: str):
    """A JSON file another stage wrote; unreadable or invalid, it names the file and the stage to rerun."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e}); rerun `dvc repro {made_by}`") from None


def read_jsonl(path: str | Path, keys: tuple[str, ...] = (), *, made_by: str) -> list[dict]:
    """The rows of a JSON-lines file made by the stage `made_by`; every row must have `keys`."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e}); rerun `dvc repro {made_by}`") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or not set(keys) <= r.keys()), None)
    if not rows or bad is not None:
        where = "it is empty" if not rows else f"line {bad + 1} lacks one of them"
        raise UserError(f"{path}: expected JSON lines with {', '.join(keys) or 'rows'}, but {where}; "
                        f"rerun `dvc repro {made_by}`")
    return rows


def write_metrics(stage: str, metrics: dict) -> Path:
    """metrics/<stage>.json, read by `dvc metrics show` and by the report."""
    return write_json(METRICS / f"{stage}.json", metrics)


def write_plot(stage: str, rows: list[dict]) -> Path:
    """plots/<stage>.csv, read by `dvc plots show` and by the report."""
    path = PLOTS / f"{stage}.csv"
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    return path


class RunLog:
    """One JSON line per event to logs/<stage>.jsonl; appended to, so a resumed run keeps its history."""

    def __init__(self, stage: str, fresh: bool = True):
        LOGS.mkdir(exist_ok=True)
        self.path = LOGS / f"{stage}.jsonl"
        self.f = open(self.path, "w" if fresh else "a", buffering=1)

    def __call__(self, **event):
        self.f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")

    def close(self):
        self.f.close()
