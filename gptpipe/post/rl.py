"""Online, PPO-style RL from SFT: the InstructGPT recipe on TRL 1.x's maintained online trainers.

TRL 1.x ships no PPOTrainer. GRPO keeps PPO's clipped-ratio objective and a KL term to the reference but
takes advantages relative to a group of completions of the same prompt instead of a value model; RLOO
does the same with a leave-one-out baseline. The reward is a weighted sum of the trained reward model's
score and the task checker's verdict (rl.reward_weights).
"""

from __future__ import annotations

from pathlib import Path

from gptpipe import sample, tasks
from gptpipe.config import Params
from gptpipe.post import reward
from gptpipe.post.common import dataset, fit, load_policy, logged, save, trainer_args


def checker(completions, answer, **_) -> list[float]:
    """1.0 when the reply's first line is the right answer (the exact-match rule of evaluate), else 0.0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(tasks.check(t, a)) for t, a in zip(texts, answer)]


def train(p: Params, proc, *, policy: Path, reward_model: Path, prompts: Path, out: Path) -> dict:
    """The rl stage: models/<rl.start> -> models/rl, rewarded by the checker and/or the reward model."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    s, wb = p.rl, p.wandb
    Config, Trainer = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[s.algorithm]
    funcs, classes, weights = [], [], []
    if s.reward_weights.model:
        rm_tok, rm = reward.load(reward_model)
        funcs, classes, weights = [rm], [rm_tok], [s.reward_weights.model]
    if s.reward_weights.checker:
        funcs, classes, weights = [*funcs, checker], [*classes, None], [*weights, s.reward_weights.checker]
    tok, model = load_policy(policy)
    sample.use_inverse_cdf()  # the trainer samples its completions with transformers' generate
    cfg = Config(**trainer_args(s, wb, "rl", policy, reward_model, prompts), num_generations=s.num_generations,
                 temperature=s.temperature, max_completion_length=s.max_completion_length, beta=s.beta,
                 reward_weights=weights)
    trainer = Trainer(model=model, reward_funcs=funcs, args=cfg, train_dataset=dataset(prompts, ("prompt", "answer"), "tasks"),
                      processing_class=tok, reward_processing_classes=classes)
    metrics = fit(trainer, "rl")
    save(trainer, out)
    return {**metrics, "algorithm": s.algorithm, "reward_first": logged(trainer, "reward", 0),
            "reward_last": logged(trainer, "reward"), "kl_last": logged(trainer, "kl"),
            "clip_ratio_last": logged(trainer, "clip_ratio/region_mean")}
