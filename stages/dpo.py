"""dpo: models/sft -> models/dpo with TRL's DPOTrainer on the preference pairs, SFT as the reference."""
from gptpipe.errors import user_errors

with user_errors("dpo"):
    from gptpipe import stage
    from gptpipe.post import dpo

    stage.run("dpo", dpo.train, launcher="accelerate", policy="models/sft", pairs="data/pairs/train.jsonl",
              out="models/dpo")
