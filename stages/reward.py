"""reward: models/sft -> models/reward, a sequence-classification reward model (TRL RewardTrainer)."""
from gptpipe.errors import user_errors

with user_errors("reward"):
    from gptpipe.post import reward
    from gptpipe.post.stage import run

    run("reward", reward.train, policy=("models/sft", "sft"), pairs=("data/pairs/train.jsonl", "pairs"))
