"""The pretraining corpus: documents in, train/val parquet files (one `text` column) out.

Two sources, chosen by `data.source`:
- `stdlib`: the Python standard library's own source files (code, docstrings and comments written by
  people), which every Python installation carries: offline, no download, deterministic for a given
  Python version. One document per file, test suites left out.
- `hf`: any Hugging Face `datasets` dataset (FineWeb-Edu on the hub, or local parquet/json files with
  `path: parquet` + `data_files`), streamed, capped by `max_docs` and `max_bytes`.
"""

from __future__ import annotations

import itertools
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gptpipe.config import Data, HFSource, Params
from gptpipe.errors import UserError
from gptpipe.split import in_fraction

SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_docs() -> Iterator[tuple[str, str]]:
    """(key, text) for every non-test .py file of the running Python's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            yield str(rel), path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of files are deliberately not UTF-8


def hf_docs(h: HFSource) -> Iterator[tuple[str, str]]:
    """(key, text) from a `datasets` dataset, streamed so a multi-GB source is never held in memory."""
    import datasets  # slow import: only on this path

    try:
        ds = datasets.load_dataset(h.path, h.name, split=h.split, data_files=h.data_files,
                                   streaming=h.streaming)
    except FileNotFoundError as e:
        raise UserError(f"data.hf: {e}. Check data.hf.path / data.hf.data_files") from None
    except Exception as e:  # the hub, a bad builder name, unreadable files: all user-fixable here
        e = e.__cause__ or e  # datasets wraps the reader's own error, which says what is wrong
        raise UserError(f"data.hf: cannot load dataset {h.path!r} ({type(e).__name__}: {e}). "
                        "Offline, point data.hf.path at a builder (parquet/json) with local data.hf.data_files") from None
    rows = iter(ds)
    for i in itertools.count():
        if h.max_docs is not None and i >= h.max_docs:
            return
        try:  # streamed files are only read here: a corrupt file or non-UTF-8 text fails on this line
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise UserError(f"data.hf: cannot read row {i} of {h.path!r} ({type(e).__name__}: {e}); "
                            "fix or drop the file in data.hf.data_files") from None
        if h.text_field not in row:
            raise UserError(f"data.hf.text_field: column {h.text_field!r} not in the dataset; "
                            f"it has {sorted(row)}")
        text = row[h.text_field]
        if text is not None and not isinstance(text, str):
            raise UserError(f"data.hf.text_field: column {h.text_field!r} holds {type(text).__name__}, not text "
                            f"(row {i}); point data.hf.text_field at a text column")
        yield str(i), text or ""


def build(d: Data, out: Path, batch_docs: int = 1000) -> dict:
    """Write out/train.parquet and out/val.parquet; return counts for metrics."""
    docs = stdlib_docs() if d.source == "stdlib" else hf_docs(d.hf)
    schema = pa.schema([("text", pa.string())])
    writers = {s: pq.ParquetWriter(out / f"{s}.parquet", schema) for s in ("train", "val")}
    buf = {"train": [], "val": []}
    stats = {f"{s}_{k}": 0 for s in ("train", "val") for k in ("docs", "bytes")}
    total = 0

    def flush(split):
        if buf[split]:
            writers[split].write_table(pa.table({"text": buf[split]}, schema=schema))
            buf[split] = []

    for key, text in docs:
        if not text or not text.strip():
            continue
        n = len(text.encode("utf-8"))
        if n > d.max_bytes:  # a whole dump in one row: it alone would blow the cap, and the memory it implies
            print(f"download: skipped document {key}: {n / 1e6:.1f} MB is over data.max_bytes", flush=True)
            continue
        if total + n > d.max_bytes and total > 0:
            break
        split = "val" if in_fraction(d.val_fraction, d.seed, key, text[:256]) else "train"
        buf[split].append(text)
        stats[f"{split}_docs"] += 1
        stats[f"{split}_bytes"] += n
        total += n
        if len(buf[split]) >= batch_docs:
            flush(split)
    for s, w in writers.items():
        flush(s)
        w.close()
    for s in ("train", "val"):
        if stats[f"{s}_docs"] == 0:
            raise UserError(f"the {s} split is empty ({stats['train_docs'] + stats['val_docs']} documents read "
                            f"from data.source={d.source}): give more data or change data.val_fraction")
    return {"source": d.source, **stats}


def run(p: Params, proc, *, out: Path) -> dict:
    """The download stage: the corpus as out/{train,val}.parquet."""
    t0 = time.perf_counter()
    stats = build(p.data, out)
    mb = (stats["train_bytes"] + stats["val_bytes"]) / 1e6
    print(f"download: {stats['train_docs']} train / {stats['val_docs']} val documents, {mb:.1f} MB "
          f"from {p.data.source} in {time.perf_counter() - t0:.1f} s")
    return stats


def read_texts(path: Path, max_chars: int | None = None) -> Iterator[str]:
    """Stream the `text` column of a corpus parquet file, batch by batch."""
    seen = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=256):
        for text in batch.column(0).to_pylist():
            yield text
            seen += len(text)
            if max_chars is not None and seen >= max_chars:
                return
