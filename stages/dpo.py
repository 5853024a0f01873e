"""dpo: models/sft -> models/dpo with TRL's DPOTrainer on the preference pairs, SFT as the reference."""
from gptpipe.errors import user_errors

with user_errors("dpo"):
    from gptpipe.post import dpo
    from gptpipe.post.stage import run

    run("dpo", dpo.train, policy=("models/sft", "sft"), pairs=("data/pairs/train.jsonl", "pairs"))
