"""Post-training with TRL/PEFT: SFT now; LoRA, reward model, DPO and RL follow the same shape."""
