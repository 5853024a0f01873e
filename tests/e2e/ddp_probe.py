"""Run under torchrun by test_ddp.py: our loop on real shards, recording what each rank saw.

    torchrun --nproc_per_node 2 ddp_probe.py TOKENS_DIR OUT_DIR STEPS [CRASH_AT_STEP]
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from gptpipe import dist, loop
from gptpipe.config import Device, Model, Train
from gptpipe.model import llama_config
from gptpipe.shards import Shards

tokens, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
crash_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
proc = dist.setup(Device(type="cpu", threads=1, peak_flops=1e11))
data = Shards(tokens, "train")
t = Train(seq_len=32, batch_size=4, total_batch_tokens=256, tokens=None, token_ratio=20, lr=3e-3,
          min_lr_frac=0.1, warmup_steps=2, schedule="cosine", decay_frac=0.2, weight_decay=0.1, beta1=0.9,
          beta2=0.95, optimizer="adamw", muon_lr=0.02, muon_momentum=0.95, grad_clip=1.0, dtype="float32",
          compile=False, deterministic=True, nproc=2, nnodes=1, rdzv_endpoint=None, rdzv_timeout_s=60,
          eval_every=1000, eval_tokens=256, ckpt_every=5, log_every=1, seed=0)
m = Model(depth=1, aspect_ratio=32, head_dim=16, kv_group=1, max_seq_len=32, width=None, n_head=None, n_kv_head=None)
torch.manual_seed(0)
model = LlamaForCausalLM(llama_config(m, data.vocab_size))
seen = []


def batch_fn(step, micro):
    if step == crash_at:
        raise SystemExit(3)  # every rank dies here, as a killed job would
    x, y = data.sample(t.batch_size, t.seq_len, np.random.default_rng([t.seed, step, micro, proc.rank]))
    seen.append(hashlib.sha1(x.numpy().tobytes()).hexdigest())
    return x, y


out.mkdir(parents=True, exist_ok=True)
import os  # noqa: E402

os.chdir(out)  # plots/ and logs/ of this run land here
metrics = loop.train(model, t, proc, loop.Run("probe", batch_fn, list(Shards(tokens, "val").windows(32, 256)),
                                              steps * 256, out / "ck", "probe"))
weights = hashlib.sha1(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
(out / f"rank{proc.rank}.json").write_text(json.dumps({"seen": seen, "weights": weights, **metrics}))
dist.teardown(proc)
