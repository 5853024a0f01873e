"""rl: models/<rl.start> -> models/rl, online RL (TRL GRPO or RLOO) rewarded by the task checker and/or models/reward."""
from gptpipe.errors import user_errors

with user_errors("rl"):
    from gptpipe import stage
    from gptpipe.post import rl

    stage.run("rl", rl.train, launcher="accelerate", policy="models/${rl.start}", reward_model="models/reward",
              prompts="data/raw/tasks/rl.jsonl", out="models/rl")
