"""rl: models/<rl.start> -> models/rl, online RL (TRL GRPO or RLOO) rewarded by models/reward and the task checker."""
from gptpipe.errors import user_errors

with user_errors("rl"):
    from gptpipe.config import load_params
    from gptpipe.post import rl
    from gptpipe.post.stage import run

    start = load_params().rl.start
    run("rl", rl.train, policy=(f"models/{start}", start), reward_model=("models/reward", "reward"),
        prompts=("data/raw/tasks/rl.jsonl", "tasks"))
