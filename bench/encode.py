"""Tokenizer throughput: our shard-writing path vs raw tiktoken on the same text, in one run.

    python bench/encode.py [--threads N]

Uses data/raw/corpus and data/tokenizer when they exist (after `dvc repro tokenize`), else builds a
tokenizer on the standard library first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptpipe import corpus, shards, tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if Path("data/tokenizer").exists() and Path("data/raw/corpus/train.parquet").exists():
        enc = tokenizer.load(Path("data/tokenizer"))
        texts = list(corpus.read_texts(Path("data/raw/corpus/train.parquet")))
    else:
        texts = [t for _, t in corpus.stdlib_docs()]
        enc = tokenizer.train(texts, 4096)
    mb = sum(len(t.encode()) for t in texts) / 1e6

    t0 = time.perf_counter()
    n_raw = sum(len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=args.threads))
    raw = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = shards.write_split(enc, texts, Path(tmp), "train", 100_000_000, args.threads)
        ours = time.perf_counter() - t0
    assert stats["tokens"] == n_raw + len(texts)  # one <|bos|> per document

    print(f"{mb:.1f} MB, {len(texts)} documents, {args.threads} threads, vocab {enc.n_vocab}")
    print(f"raw tiktoken encode_ordinary_batch: {mb / raw:6.1f} MB/s  ({mb / raw / args.threads:.1f} MB/s/thread)")
    print(f"gptpipe shards.write_split:         {mb / ours:6.1f} MB/s  ({mb / ours / args.threads:.1f} MB/s/thread)")
    print(f"ratio gptpipe / raw: {raw / ours:.2f}x")


if __name__ == "__main__":
    main()
