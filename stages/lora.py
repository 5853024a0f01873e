"""lora: models/sft -> models/lora/{adapter,merged}, PEFT LoRA adapters trained on the task conversations."""
from gptpipe.errors import user_errors

with user_errors("lora"):
    from gptpipe.post import lora
    from gptpipe.post.stage import run

    run("lora", lora.train, policy=("models/sft", "sft"), conversations=("data/raw/tasks/sft.jsonl", "tasks"),
        tokens=("data/tokens", "tokenize"))
