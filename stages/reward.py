"""reward: models/sft -> models/reward, a sequence-classification reward model (TRL RewardTrainer)."""
from gptpipe.errors import user_errors

with user_errors("reward"):
    from gptpipe import stage
    from gptpipe.post import reward

    stage.run("reward", reward.train, launcher="accelerate", policy="models/sft", pairs="data/pairs/train.jsonl",
              out="models/reward")
