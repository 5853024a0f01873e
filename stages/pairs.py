"""pairs: models/sft -> data/pairs/{train,heldout}.jsonl, on-policy preference pairs labeled by the task checker.

train: from the RL prompts (the training questions), for reward and dpo. heldout: from the held-out
questions, only to score the reward model's pairwise accuracy. With `pairs.source: tasks`, the tasks
stage's prefs_train/prefs_heldout (a preference dataset with tasks.source: hf) are used as they are.
"""
from gptpipe.errors import user_errors

with user_errors("pairs"):
    from gptpipe import pairs, stage

    stage.run("pairs", pairs.run, tasks="data/raw/tasks", policy="models/sft", out="data/pairs")
