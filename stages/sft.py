"""sft: models/mid -> models/sft with TRL's SFTTrainer on the task conversations, loss on the replies only."""
from gptpipe.errors import user_errors

with user_errors("sft"):
    from gptpipe import stage
    from gptpipe.post import sft

    stage.run("sft", sft.train, launcher="accelerate", policy="models/mid", conversations="data/raw/tasks/sft.jsonl",
              tokens="data/tokens", out="models/sft")
