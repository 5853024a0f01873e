"""Throughput and latency of `gptpipe serve`: streamed chat completions from 1 and 8 concurrent clients.

    python bench/serve.py [MODEL] [--requests 24] [--max-tokens 32]

Starts the server on a free loopback port (MODEL: default export/gguf/model-f16.gguf), sends the held-out
task questions with the official openai client, and prints per concurrency: time to first token p50/p95,
per-request decode tokens/s and the server's total generated tokens/s.
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(client: OpenAI, question: str, max_tokens: int) -> tuple[float, int, float]:
    """(time to first token, tokens, seconds) of one streamed reply; usage is not streamed, so a token is a chunk."""
    t0, first, n = time.perf_counter(), None, 0
    stream = client.chat.completions.create(model="gptpipe", messages=[{"role": "user", "content": question}],
                                            max_tokens=max_tokens, temperature=0.7, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - t0
            n += 1
    return first or float("nan"), n, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="export/gguf/model-f16.gguf")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    questions = [json.loads(line)["prompt"][0]["content"] for line in open("data/raw/tasks/eval.jsonl")]
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "gptpipe"), "serve", args.model, "--port", str(port)])
    try:
        t0 = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("serve: the server exited")
                time.sleep(0.2)
        print(f"model {args.model}; server up in {time.perf_counter() - t0:.1f} s")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        one(client, questions[0], 4)  # warm-up
        base = None
        for clients in (1, 8):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                runs = list(pool.map(lambda q: one(client, q, args.max_tokens), questions[:args.requests]))
            wall = time.perf_counter() - t0
            ttft = [r[0] * 1000 for r in runs]
            decode = [(n - 1) / (s - f) for f, n, s in runs if n > 1 and s > f]
            total = sum(r[1] for r in runs) / wall
            base = base or total
            print(f"{clients} client(s), {len(runs)} requests: time to first token p50 {pct(ttft, 50):.0f} ms, "
                  f"p95 {pct(ttft, 95):.0f} ms; per-request decode {statistics.median(decode):.0f} tok/s (median); "
                  f"server total {total:.0f} tok/s ({total / base:.2f}x one client)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
