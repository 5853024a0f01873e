"""lora: models/sft -> adapters/lora (PEFT) and models/lora (merged), trained on the task conversations."""
from gptpipe.errors import user_errors

with user_errors("lora"):
    from gptpipe import stage
    from gptpipe.post import lora

    stage.run("lora", lora.train, launcher="accelerate", policy="models/sft", conversations="data/raw/tasks/sft.jsonl",
              tokens="data/tokens", out="models/lora", adapter="adapters/lora")
