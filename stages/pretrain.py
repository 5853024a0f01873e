"""pretrain (`python -m stages.pretrain`): train a fresh Llama on the token shards into models/base (HF dir); resumable."""
import time
from pathlib import Path

from gptpipe.errors import user_errors

with user_errors("pretrain"):
    from gptpipe import dist, pretrain
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, write_metrics

    p = load_params()
    dist.relaunch(p.pretrain.nproc)
    tokens = require_file("data/tokens", made_by="tokenize")
    tokenizer = require_file("data/tokenizer", made_by="tokenize")
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    kw = dict(tokens=tokens, tokenizer=tokenizer, ckpt_root=Path("checkpoints/pretrain"))
    if proc.main:
        with atomic_dir("models/base") as out:
            metrics = pretrain.run(p, proc, out=out, **kw)
        write_metrics("pretrain", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2)})
    else:
        pretrain.run(p, proc, out=None, **kw)
    dist.teardown(proc)
