"""midtrain: models/base -> models/mid on corpus + chat conversations, with our resumable loop."""
import time
from pathlib import Path

from gptpipe.errors import user_errors

with user_errors("midtrain"):
    from gptpipe import dist, midtrain
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, write_metrics

    p = load_params()
    dist.relaunch(p.midtrain.nproc)
    kw = dict(base=require_file("models/base", made_by="pretrain"), tokens=require_file("data/tokens", made_by="tokenize"),
              conversations=require_file("data/raw/tasks/sft.jsonl", made_by="tasks"),
              ckpt_root=Path("checkpoints/midtrain"))
    proc = dist.setup(p.device)
    t0 = time.perf_counter()
    if proc.main:
        with atomic_dir("models/mid") as out:
            metrics = midtrain.run(p, proc, out=out, **kw)
        write_metrics("midtrain", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2)})
    else:
        midtrain.run(p, proc, out=None, **kw)
    dist.teardown(proc)
