"""Where each model lives and which stage makes it: the one list the evaluate, quantize and export stages share."""

MODELS = {  # name -> (directory, the stage that writes it)
    "base": ("models/base", "pretrain"), "mid": ("models/mid", "midtrain"), "sft": ("models/sft", "sft"),
    "lora": ("models/lora/merged", "lora"), "dpo": ("models/dpo", "dpo"), "rl": ("models/rl", "rl"),
    "quantized": ("models/quantized", "quantize"),
}
REWARD = ("models/reward", "reward")
ADAPTER = ("models/lora/adapter", "lora")  # the LoRA adapter alone, applied to sft
