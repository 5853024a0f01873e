"""LoRA: low-rank adapters on the frozen SFT model, trained with SFTTrainer through PEFT.

Saves the adapter (`PeftModel.from_pretrained(sft, "adapters/lora")`), with base.json naming the weights it
was trained on, and the adapter merged into the weights (`models/lora`, a stock HF dir that anything loads
without PEFT: the model evaluate scores and export ships).
"""

from __future__ import annotations

from pathlib import Path

from gptpipe.config import Params
from gptpipe.model import save_adapter
from gptpipe.post import sft
from gptpipe.post.common import fit, logged


def train(p: Params, proc, *, policy: Path, conversations: Path, tokens: Path, out: Path, adapter: Path) -> dict:
    """The lora stage: the adapter (`adapter`) and the sft model with it merged in (`out`, a stock HF dir)."""
    from peft import LoraConfig

    s = p.lora
    peft_config = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, task_type="CAUSAL_LM",
                             target_modules=s.target_modules[0] if s.target_modules == ["all-linear"] else s.target_modules)
    trainer = sft.make_trainer(s, p.wandb, policy=policy, conversations=conversations, tokens=tokens, stage="lora",
                               peft_config=peft_config)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    print(f"lora: {trainable:,} trainable of {total:,} params ({100 * trainable / total:.2f}%)")
    metrics = fit(trainer, "lora")
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, adapter, base=policy)
        trainer.model.merge_and_unload().save_pretrained(out)
        for d in (adapter, out):
            trainer.processing_class.save_pretrained(d)
    return {**metrics, "trainable_params": trainable, "total_params": total,
            "trainable_fraction": round(trainable / total, 5), "mean_token_accuracy": logged(trainer, "mean_token_accuracy")}
