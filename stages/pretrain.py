"""pretrain: a fresh Llama trained on the token shards into models/base (HF dir) with our resumable loop."""
from gptpipe.errors import user_errors

with user_errors("pretrain"):
    from gptpipe import pretrain, stage

    stage.run("pretrain", pretrain.run, launcher="torchrun", tokens="data/tokens", tokenizer="data/tokenizer",
              out="models/base")
