"""midtrain: models/base -> models/mid on corpus + chat conversations, with our resumable loop."""
from gptpipe.errors import user_errors

with user_errors("midtrain"):
    from gptpipe import midtrain, stage

    stage.run("midtrain", midtrain.run, launcher="torchrun", base="models/base", tokens="data/tokens",
              conversations="data/raw/tasks/sft.jsonl", out="models/mid")
