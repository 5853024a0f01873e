"""Online, PPO-style RL from SFT: the InstructGPT recipe on TRL 1.x's maintained online trainers.

TRL 1.x ships no PPOTrainer. GRPO keeps PPO's clipped-ratio objective and a KL term to the reference but
takes advantages relative to a group of completions of the same prompt instead of a value model; RLOO
does the same with a leave-one-out baseline. The reward is a weighted sum of the trained reward model's
score and the task checker's verdict (rl.reward_weights).

A group whose completions all score alike has no advantage and gives no gradient, and most groups agree once
DPO has run (22% of 5,000 prompts gave a mixed group of 8). With `rl.filter_prompts` the policy first answers
that many prompts as GRPO would (num_generations samples at its temperature, seeded), and RL trains on those
it gets right sometimes but not always: DAPO's dynamic sampling, done once, up front.
"""

from __future__ import annotations

import collections
from pathlib import Path

from gptpipe import sample, tasks
from gptpipe.config import RL, Params
from gptpipe.io import read_jsonl
from gptpipe.post import reward
from gptpipe.post.common import fit, load_policy, logged, rows_dataset, save, trainer_args

PROMPTS = ("prompt", "answer")  # the columns GRPO reads: the prompt, and the answer the checker takes
FILTER_BATCH = 64  # prompts per decode call while filtering, as pairs.batch_size


def checker(completions, answer, **_) -> list[float]:
    """1.0 when the reply's first line is the right answer (the exact-match rule of evaluate), else 0.0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(tasks.check(t, a)) for t, a in zip(texts, answer)]


def mixed(rows: list[dict], sampled: list[list[str]]) -> list[dict]:
    """The rows whose sampled replies the checker neither always accepts nor always rejects."""
    return [r for r, texts in zip(rows, sampled) if 0 < sum(tasks.check(t, r["answer"]) for t in texts) < len(texts)]


def informative(s: RL, model, tok, rows: list[dict], device) -> tuple[list[dict], dict]:
    """The first s.filter_prompts rows whose group of samples is mixed (all rows when s.filter_prompts is 0, or
    when none is: a policy that gets nothing right still trains), and what was seen."""
    if not s.filter_prompts:
        return rows, {}
    head = rows[:s.filter_prompts]
    texts = sample.replies(model, tok, [r["prompt"] for r in head], device, FILTER_BATCH, s.max_completion_length,
                           k=s.num_generations, temperature=s.temperature, seed=s.seed)
    kept = mixed(head, texts)
    print(f"rl: {len(kept)} of {len(head)} prompts give a mixed group ({s.num_generations} samples at temperature "
          f"{s.temperature}); per task {dict(collections.Counter(r.get('task') for r in kept))}"
          + ("" if kept else f"; none does, so RL trains on all {len(rows)}"), flush=True)
    return kept or rows, {"prompts_sampled": len(head), "prompts_mixed": len(kept)}


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
    rows, seen = informative(s, model, tok, read_jsonl(prompts, PROMPTS, made_by="tasks"), proc.device)
    sample.use_inverse_cdf()  # the trainer samples its completions with transformers' generate
    cfg = Config(**trainer_args(s, wb, "rl", policy, reward_model, prompts), num_generations=s.num_generations,
                 temperature=s.temperature, max_completion_length=s.max_completion_length, beta=s.beta,
                 reward_weights=weights)
    trainer = Trainer(model=model, reward_funcs=funcs, args=cfg, train_dataset=rows_dataset(rows, PROMPTS),
                      processing_class=tok, reward_processing_classes=classes)
    metrics = fit(trainer, "rl")
    save(trainer, out)
    return {**metrics, **seen, "algorithm": s.algorithm, "reward_first": logged(trainer, "reward", 0),
            "reward_last": logged(trainer, "reward"), "kl_last": logged(trainer, "kl"),
            "clip_ratio_last": logged(trainer, "clip_ratio/region_mean")}
