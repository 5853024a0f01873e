"""sft: models/mid -> models/sft with TRL's SFTTrainer on the task conversations, loss on the replies only."""
from gptpipe.errors import user_errors

with user_errors("sft"):
    from gptpipe.post import sft
    from gptpipe.post.stage import run

    run("sft", sft.train, policy=("models/mid", "midtrain"), conversations=("data/raw/tasks/sft.jsonl", "tasks"),
        tokens=("data/tokens", "tokenize"))
