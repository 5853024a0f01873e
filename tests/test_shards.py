"""Token shards: layout, dtype, windows, and a clear error for truncated or missing files."""

import json

import numpy as np
import pytest

from gptpipe import shards, tokenizer
from gptpipe.errors import UserError


def test_shards_round_trip(micro_data, tmp_path):
    _, dirs = micro_data
    enc = tokenizer.load(dirs["tokenizer"])
    docs = ["hello world", "def f(x):\n    return x\n", "é 😀"] * 50
    stats = shards.write_split(enc, docs, tmp_path, "train", shard_tokens=1024, workers=2)
    assert len(stats["files"]) > 1 and all(f["tokens"] <= 1024 for f in stats["files"])
    flat = np.concatenate([np.fromfile(tmp_path / f["file"], dtype=np.uint16) for f in stats["files"]])
    bos = enc._special_tokens["<|bos|>"]
    expected = [t for d in docs for t in [bos, *enc.encode_ordinary(d)]]
    assert flat.tolist() == expected and stats["tokens"] == len(expected)


def test_meta_and_sampling(micro_data):
    p, dirs = micro_data
    meta = json.loads((dirs["tokens"] / shards.META).read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == p.tokenizer.vocab_size
    s = shards.Shards(dirs["tokens"], "train")
    x1, y1 = s.sample(4, 32, np.random.default_rng(0))
    x2, _ = s.sample(4, 32, np.random.default_rng(0))
    assert x1.shape == (4, 32) and (x1 == x2).all() and (x1[:, 1:] == y1[:, :-1]).all()
    assert int(x1.max()) < s.vocab_size
    w = list(s.windows(32, 100))
    assert len(w) == 4 and all(len(t) == 33 for t in w)


def test_windows_cover_the_whole_split(micro_data):
    """With no token limit the windows tile every shard: each token after a shard's first is a target once,
    but for a tail shorter than a window."""
    val = shards.Shards(micro_data[1]["tokens"], "val")
    targets = np.concatenate([t[1:].numpy() for t in val.windows(32)])
    every = np.concatenate([a[1:1 + (len(a) - 1) // 32 * 32] for a in val.arrays])
    assert targets.tolist() == every.tolist() and len(targets) > 64


def test_dtype_for_large_vocab():
    assert shards.dtype_for(65536) is np.uint16 and shards.dtype_for(65537) is np.uint32


def test_truncated_or_missing_shard(micro_data, tmp_path):
    import shutil

    d = tmp_path / "tokens"
    shutil.copytree(micro_data[1]["tokens"], d)
    f = d / "train_0000.bin"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(UserError, match="train_0000.bin is missing or truncated"):
        shards.Shards(d, "train")
    with pytest.raises(UserError, match="meta.json not found: run `dvc repro tokenize`"):
        shards.Shards(tmp_path / "nowhere", "train")
