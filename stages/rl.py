"""rl: models/sft -> models/rl, online RL (TRL GRPO or RLOO) rewarded by models/reward and the task checker."""
from gptpipe.errors import user_errors

with user_errors("rl"):
    from gptpipe.post import rl
    from gptpipe.post.stage import run

    run("rl", rl.train, policy=("models/sft", "sft"), reward_model=("models/reward", "reward"),
        prompts=("data/raw/tasks/rl.jsonl", "tasks"))
