"""The corpus: the offline stdlib default and the `datasets` path on local parquet/jsonl files."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptpipe import corpus
from gptpipe.config import Data, HFSource
from gptpipe.errors import UserError


def data(**kw) -> Data:
    hf = {"path": "parquet", "name": None, "split": "train", "text_field": "text", "data_files": None,
          "streaming": True, "max_docs": None} | kw.pop("hf", {})
    return Data(**({"source": "stdlib", "max_bytes": 300_000, "val_fraction": 0.1, "seed": 0} | kw),
                hf=HFSource(**hf))


def texts(path):
    return list(corpus.read_texts(path))


def test_stdlib_is_real_deterministic_and_capped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    stats = corpus.build(data(), a)
    corpus.build(data(), b)
    assert stats["train_bytes"] + stats["val_bytes"] <= 300_000
    assert stats["val_docs"] > 0 and stats["train_docs"] > stats["val_docs"]
    assert texts(a / "train.parquet") == texts(b / "train.parquet")
    assert any("def " in t for t in texts(a / "train.parquet"))


def test_whole_stdlib_default_is_over_10mb():
    total = sum(len(t.encode()) for _, t in corpus.stdlib_docs())
    assert total > 10e6


def test_hf_parquet_and_jsonl(tmp_path):
    docs = [f"document number {i} " * 20 for i in range(200)]
    pq.write_table(pa.table({"text": docs, "id": list(range(200))}), tmp_path / "part-0.parquet")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))

    out = tmp_path / "pq"
    out.mkdir()
    stats = corpus.build(data(source="hf", hf={"data_files": str(tmp_path / "part-0.parquet"), "max_docs": 150}), out)
    assert stats["train_docs"] + stats["val_docs"] == 150
    assert set(texts(out / "train.parquet")) | set(texts(out / "val.parquet")) == set(docs[:150])

    out = tmp_path / "js"
    out.mkdir()
    stats = corpus.build(data(source="hf", max_bytes=20_000,
                              hf={"path": "json", "data_files": str(tmp_path / "docs.jsonl"),
                                  "text_field": "content", "streaming": False}), out)
    assert 0 < stats["train_bytes"] + stats["val_bytes"] <= 20_000


def test_hf_errors_name_the_key(tmp_path):
    pq.write_table(pa.table({"body": ["x" * 100] * 10}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="data.hf.text_field: column 'text' not in the dataset; it has \\['body'\\]"):
        corpus.build(data(source="hf", hf={"data_files": str(tmp_path / "p.parquet")}), tmp_path)
    with pytest.raises(UserError, match="data.hf"):
        corpus.build(data(source="hf", hf={"data_files": str(tmp_path / "missing-*.parquet")}), tmp_path)


def test_empty_split_is_refused(tmp_path):
    pq.write_table(pa.table({"text": ["only one document here"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="split is empty"):
        corpus.build(data(source="hf", hf={"data_files": str(tmp_path / "p.parquet")}), tmp_path)
