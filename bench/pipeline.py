"""Where a `dvc repro` spends its time: each stage's start-up (interpreter, imports, params, input checks),
work and write-out (outputs renamed into place, metrics), from the metrics/<stage>.json the stage runner
wrote on the last run; then the no-op `dvc repro` that follows, timed.

    python bench/pipeline.py            # after a `dvc repro`; --noop N times the no-op N times (default 3)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from gptpipe import artifacts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noop", type=int, default=3, help="time this many no-op `dvc repro` runs (0: none)")
    a = ap.parse_args()
    rows = []
    for stage in artifacts.stages():
        f = Path("metrics", f"{stage}.json")
        if f.exists():
            m = json.loads(f.read_text())
            start, total, write = m.get("startup_s") or 0.0, m.get("elapsed_s") or 0.0, m.get("write_s") or 0.0
            rows.append((stage, start, total - write, write))
    print(f"{'stage':<10} {'start-up s':>10} {'work s':>8} {'write s':>8} {'total s':>8} {'start-up %':>10}")
    for stage, start, work, write in rows:
        total = start + work + write
        print(f"{stage:<10} {start:>10.1f} {work:>8.1f} {write:>8.2f} {total:>8.1f} {100 * start / total:>9.0f}%")
    s, w, o = (sum(r[i] for r in rows) for i in (1, 2, 3))
    print(f"{'all':<10} {s:>10.1f} {w:>8.1f} {o:>8.2f} {s + w + o:>8.1f} {100 * s / (s + w + o):>9.0f}%")
    if a.noop:
        times = []
        for _ in range(a.noop):
            t0 = time.perf_counter()
            out = subprocess.run(["dvc", "repro"], capture_output=True, text=True, check=True).stdout
            times.append(time.perf_counter() - t0)
        ran = out.count("Running stage")
        print(f"no-op dvc repro: median {statistics.median(times):.2f} s of {a.noop} "
              f"(min {min(times):.2f} s){'' if not ran else f'; it ran {ran} stages, so it was not a no-op'}")


if __name__ == "__main__":
    main()
