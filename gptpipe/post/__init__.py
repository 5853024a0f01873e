"""Post-training with TRL and PEFT: sft, lora, reward, dpo and rl, each a `train()` that post/stage.run wraps."""
