"""Data stages at scale: download (parquet write), BPE training and parallel encode, per GB and per core.

    python bench/data_scale.py [--mb 256] [--workers 1 2]

FineWeb is not reachable here, so the corpus is the standard library's documents cycled up to --mb MB
(different text, same code paths: corpus.build writes it as the download stage does, then
shards.write_split encodes it as the tokenize stage does). Prints MB/s, MB/s per worker, seconds per GB,
the ratio against raw tiktoken on the same text, and what that means for FineWeb-Edu's 10B-token sample.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptpipe import corpus, shards, tokenizer  # noqa: E402
from gptpipe.config import load_params  # noqa: E402


STDLIB_DOCS = corpus.stdlib_docs


def cycled_docs():
    """The stdlib documents over and over, each pass with its own keys (so the train/val split still mixes)."""
    docs = list(STDLIB_DOCS())
    for n in itertools.count():
        for key, text in docs:
            yield f"{n}/{key}", text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256, help="corpus size in MB of UTF-8 text")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="encoding processes to time")
    ap.add_argument("--train-mb", type=int, default=10, help="text the BPE trains on, MB (the stage's train_chars)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus.stdlib_docs = cycled_docs  # the download stage's own writer, on a bigger input
        d = load_params().data.model_copy(update={"source": "stdlib", "max_bytes": args.mb * 10**6, "val_fraction": 0.001})
        t0 = time.perf_counter()
        stats = corpus.build(d, tmp)
        write_s = time.perf_counter() - t0
        corpus.stdlib_docs = STDLIB_DOCS
        mb = stats["train_bytes"] / 1e6
        print(f"corpus: {mb:.0f} MB train text, {stats['train_docs']:,} documents")
        print(f"download (parquet write):     {mb / write_s:7.1f} MB/s   {1000 / (mb / write_s):6.1f} s/GB")

        t0 = time.perf_counter()
        enc = tokenizer.train(corpus.read_texts(tmp / "train.parquet", max_chars=args.train_mb * 10**6), 4096)
        print(f"BPE training on {args.train_mb} MB:       {time.perf_counter() - t0:7.1f} s (once per run, not per GB)")

        t0 = time.perf_counter()
        n_raw = sum(len(ids) for batch in shards.batched(corpus.read_texts(tmp / "train.parquet"), 512)
                    for ids in enc.encode_ordinary_batch(batch, num_threads=1))
        raw = mb / (time.perf_counter() - t0)
        print(f"raw tiktoken, 1 process:      {raw:7.1f} MB/s")
        rates = {}
        for workers in args.workers:
            out = tmp / f"tokens{workers}"
            out.mkdir()
            t0 = time.perf_counter()
            s = shards.write_split(enc, corpus.read_texts(tmp / "train.parquet"), out, "train", 10**8, workers)
            rates[workers] = rate = mb / (time.perf_counter() - t0)
            assert s["tokens"] == n_raw + stats["train_docs"]  # one <|bos|> per document
            print(f"tokenize, {workers:2d} worker(s):        {rate:7.1f} MB/s   {rate / workers:5.1f} MB/s/worker   "
                  f"{1000 / rate:6.1f} s/GB   {rate / raw:.2f}x raw tiktoken")
        w = max(rates)
        per_worker = rates[w] / w
        fineweb_mb = 10e9 * 4.5 / 1e6  # FineWeb-Edu sample-10BT: 10B GPT-2 tokens at ~4.5 bytes each
        print(f"{n_raw:,} tokens, {s['bytes'] / n_raw:.2f} bytes/token on this corpus (code: fewer bytes per token than prose)")
        if len(rates) > 1:
            print(f"scaling {min(rates)} → {w} workers: {rates[w] / rates[min(rates)]:.2f}x")
        print(f"FineWeb-Edu sample-10BT (~{fineweb_mb / 1e3:.0f} GB of text): ≈ {fineweb_mb / per_worker / 3600:.1f} "
              f"worker-hours to tokenize at {per_worker:.1f} MB/s/worker (≈ {fineweb_mb / per_worker / 16 / 60:.0f} min "
              f"with 16 workers, if the scaling measured above holds)")

if __name__ == "__main__":
    main()
