"""download: the pretraining corpus as data/raw/corpus/{train,val}.parquet (see gptpipe/corpus.py)."""
import time

from gptpipe.errors import user_errors

with user_errors("download"):
    from gptpipe import corpus
    from gptpipe.config import load_params
    from gptpipe.io import atomic_dir, write_metrics

    p = load_params()
    t0 = time.perf_counter()
    with atomic_dir("data/raw/corpus") as out:
        stats = corpus.build(p.data, out)
    elapsed = time.perf_counter() - t0
    mb = (stats["train_bytes"] + stats["val_bytes"]) / 1e6
    print(f"download: {stats['train_docs']} train / {stats['val_docs']} val documents, {mb:.1f} MB "
          f"from {p.data.source} in {elapsed:.1f} s")
    write_metrics("download", {**stats, "elapsed_s": round(elapsed, 2), "device": "cpu"})
