"""The tokenize stage's work: train the BPE on the train split, save it, encode both splits to shards."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from gptpipe import corpus as corpus_io
from gptpipe import shards, tokenizer
from gptpipe.config import Params


def run(p: Params, proc, *, corpus: Path, tokenizer_dir: Path, tokens_dir: Path) -> dict:
    t, t0 = p.tokenizer, time.perf_counter()
    enc = tokenizer.train(corpus_io.read_texts(corpus / "train.parquet", max_chars=t.train_chars), t.vocab_size)
    if enc.n_vocab != t.vocab_size:
        print(f"tokenize: the corpus supports only {enc.n_vocab} tokens, not tokenizer.vocab_size={t.vocab_size}")
    tokenizer.save(enc, tokenizer_dir)
    train_s = time.perf_counter() - t0
    print(f"tokenize: trained a {enc.n_vocab}-token BPE in {train_s:.1f} s", flush=True)

    meta = {"dtype": shards.dtype_for(enc.n_vocab).__name__, "vocab_size": enc.n_vocab,
            "bos_id": enc._special_tokens[tokenizer.BOS], "splits": {}}
    t1 = time.perf_counter()
    for split in ("train", "val"):
        path = corpus / f"{split}.parquet"
        with tqdm(desc=f"encode {split}", unit="char", unit_scale=True, mininterval=1.0) as bar:
            meta["splits"][split] = shards.write_split(enc, corpus_io.read_texts(path), tokens_dir, split,
                                                       t.shard_tokens, t.workers, progress=bar)
    (tokens_dir / shards.META).write_text(json.dumps(meta, indent=2))
    encode_s = time.perf_counter() - t1
    n_tok = sum(s["tokens"] for s in meta["splits"].values())
    n_bytes = sum(s["bytes"] for s in meta["splits"].values())
    print(f"tokenize: {n_tok:,} tokens from {n_bytes / 1e6:.1f} MB in {encode_s:.1f} s "
          f"({n_bytes / 1e6 / encode_s:.1f} MB/s, {n_bytes / n_tok:.2f} bytes/token)")
    return {"vocab_size": enc.n_vocab, "train_tokens": meta["splits"]["train"]["tokens"],
            "val_tokens": meta["splits"]["val"]["tokens"], "bytes_per_token": round(n_bytes / n_tok, 4),
            "bpe_train_s": round(train_s, 2), "encode_mb_per_s": round(n_bytes / 1e6 / encode_s, 2)}
