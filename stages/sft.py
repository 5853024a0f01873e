"""sft: models/mid -> models/sft with TRL's SFTTrainer on the task conversations."""
import time

from gptpipe.errors import user_errors

with user_errors("sft"):
    from gptpipe import dist
    from gptpipe.config import load_params
    from gptpipe.errors import require_file
    from gptpipe.io import atomic_dir, write_metrics
    from gptpipe.post import sft

    p = load_params()
    dist.relaunch_under_torchrun(p.sft.nproc)
    mid = require_file("models/mid", made_by="midtrain")
    conversations = require_file("data/raw/tasks/sft.jsonl", made_by="tasks")
    t0 = time.perf_counter()
    with atomic_dir("models/sft") as out:
        metrics = sft.train(p.sft, p.wandb, policy=mid, conversations=conversations, out=out)
    write_metrics("sft", {**metrics, "elapsed_s": round(time.perf_counter() - t0, 2),
                          "device": "cuda" if dist.torch.cuda.is_available() else "cpu"})
