"""What every TRL stage shares: the policy, its data, device-aware trainer args, the resumable fit, its plot."""

from __future__ import annotations

import json
import os
import pickle
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import TrainerCallback

from gptpipe import ckpt
from gptpipe.config import Post, Wandb
from gptpipe.dist import bf16, trainer_device
from gptpipe.errors import UserError, cause
from gptpipe.io import read_jsonl, write_plot
from gptpipe.model import fp32_attention, load_pretrained

CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # the trainer's dir for its state after N optimizer steps


def load_policy(path: Path):
    """The tokenizer and a causal LM in fp32, for training (the trainer's bf16 autocast, if any, takes over)."""
    tok, model = load_pretrained(path, dtype=torch.float32)
    return tok, for_training(model)


def for_training(model):
    """The model, with its attention in fp32 where a CPU runs the rest in bf16 (model.fp32_attention). Measured
    on the default run, fp32 vs bf16 on AMX: SFT 88.9 vs 63.9 s of training, DPO 92.4 vs 70.8 s (the same
    dev accuracy within +-0.004, n=5,000); RL 41.9 vs 42.3 s (its time is generation)."""
    fp32_attention(model, "auto", trainer_device())
    return model


class PlainLMHead:
    """TRL's per-token log-probabilities, entropy and top-1 flags from whole logits, for the CPU.

    TRL 1.16's SFT, DPO, GRPO and RLOO trainers score tokens through a chunked LM-head kernel that never holds
    the [tokens, vocab] logits: right for a 150K vocabulary on a GPU, but without Triton it folds its tiles in
    Python and recomputes them in the backward. For the default run's 2,048 x 4,096 logits it took 0.38 s per
    forward and backward against 0.23 s here, and 56 SFT steps 19-21.5 s against 12-14.5 s. Past LIMIT logits
    it still hands over to the kernel.
    `apply` takes the kernel's arguments and returns its outputs (those not asked for are None).
    """

    LIMIT = 2**26  # logits (256 MiB in fp32)
    chunked = None  # TRL's kernel, kept by use_plain_lm_head

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
              outputs=("log_probs",)):
        if hidden.shape[0] * weight.shape[0] > PlainLMHead.LIMIT:
            return PlainLMHead.chunked.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap,
                                             logit_scale, outputs)
        z = torch.nn.functional.linear(hidden, weight, bias).float()  # each pass over the logits costs: skip 1.0s
        if logit_scale != 1.0:
            z = z * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        if temperature != 1.0:
            z = z / temperature
        log_p = z.log_softmax(-1)
        target = log_p.gather(-1, targets[:, None]).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * log_p, -1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            is_top1 = target >= log_p.amax(-1) if "is_top1" in outputs else None  # amax: 8x faster than argmax here
        return target, entropy, log_sum_sq, mean_logits, is_top1


def labelled_only(device) -> bool:
    """TRL's question "compact?": score only the positions with a label (TRL does so only on Triton devices)."""
    return True


def use_plain_lm_head() -> None:
    """On a machine without CUDA, TRL's trainers score tokens with PlainLMHead (see there), and only the positions
    with a label. Off Triton TRL scores every position (fixed shapes for Neuron's compiler), though a DPO row's
    labels are its reply, about a tenth of its tokens: 57 DPO steps took 12.9-14.3 s scoring all of them, 8.0-10.8 s
    the labelled ones; 56 SFT steps 11.1-12.3 s against 6.9-7.8 s."""
    from trl.trainer import utils

    if not torch.cuda.is_available() and utils._ChunkedLogProbFunction is not PlainLMHead:
        PlainLMHead.chunked, utils._ChunkedLogProbFunction = utils._ChunkedLogProbFunction, PlainLMHead
        utils._use_triton = labelled_only


def dataset(path: Path, keys: tuple[str, ...], made_by: str):
    """A `datasets.Dataset` of a stage's JSON lines, with just the columns the trainer reads."""
    return rows_dataset(read_jsonl(path, keys, made_by=made_by), keys)


def rows_dataset(rows: list[dict], keys: tuple[str, ...]):
    """A `datasets.Dataset` of rows, with just the columns `keys`."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in keys} for r in rows])


def ckpt_dir(stage: str, s: Post, inputs: tuple[Path, ...]) -> Path:
    """checkpoints/<stage>/<key>, the key a hash of the stage's params and of its inputs' bytes, so a checkpoint
    made with other params, another policy or other data is never resumed."""
    return Path("checkpoints", stage, ckpt.key(s.model_dump(), *inputs))


def trainer_args(s: Post, wb: Wandb, stage: str, *inputs: Path) -> dict:
    """Keyword arguments for a TRL *Config on this device; `inputs` are the paths the stage trains from.

    No gradient checkpointing, and bf16 only where `dist.bf16` says: TRL 1.16 defaults to both, which made a tiny
    model's step ~5x slower on a CPU without bf16 units (measured 1.84 s vs 0.38 s).
    Every `ckpt_every` steps the trainer checkpoints to `ckpt_dir` (only the newest kept), for `fit` to resume
    from after a kill; the stage saves the final model itself, atomically, and then deletes checkpoints/<stage>.
    """
    use_plain_lm_head()
    mode = os.environ.get("WANDB_MODE", wb.mode)
    # warmup_steps takes the ratio: transformers 5 reads a float in [0, 1) as a share of the steps (warmup_ratio is
    # deprecated), so params keep the unit the step count does not fix
    return dict(output_dir=str(ckpt_dir(stage, s, inputs)), run_name=stage, learning_rate=s.lr,
                num_train_epochs=s.epochs, per_device_train_batch_size=s.batch_size,
                gradient_accumulation_steps=s.grad_accum, warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay,
                lr_scheduler_type="cosine", logging_steps=5, save_strategy="steps" if s.ckpt_every else "no",
                save_steps=s.ckpt_every, save_total_limit=1, seed=s.seed, data_seed=s.seed, bf16=bf16(),
                use_cpu=trainer_device() == "cpu", gradient_checkpointing=False, dataloader_num_workers=0,
                report_to=[] if mode == "disabled" else ["wandb"], disable_tqdm=False)


class LogAtCheckpoints(TrainerCallback):
    """Log at every checkpoint and at the end, so a checkpoint's log_history holds the loss of every step
    before it and `mean_loss` is exact after a resume. Drop the trainer's save at the end: the stage saves
    the model itself."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_log |= control.should_save or control.should_training_stop
        control.should_save &= not control.should_training_stop
        return control


def last_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint-N under root that a kill did not cut short. The trainer writes trainer_state.json
    last (after the weights, optimizer, scheduler and RNG states), so a dir without a readable one is skipped."""
    steps = sorted((int(m[1]), p) for p in root.glob("checkpoint-*") if (m := CHECKPOINT.fullmatch(p.name)))
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return path
    return None


def fit(trainer, stage: str) -> dict:
    """Train, resuming from the last checkpoint a killed run with the same params and inputs left; write
    plots/<stage>.csv; return the run's metrics (the stage adds its own).

    transformers restores the weights from safetensors, the optimizer, scheduler and RNG states with
    torch.load(weights_only=True) and the rest from JSON; a pickle that is more than tensors is refused.
    """
    resume = last_checkpoint(Path(trainer.args.output_dir))
    if resume and trainer.is_world_process_zero():
        print(f"{stage}: resuming from {resume}", flush=True)
    trainer.add_callback(LogAtCheckpoints)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except (pickle.UnpicklingError, SafetensorError) as e:  # only a checkpoint's files raise these
        if not resume:
            raise
        raise UserError(f"{resume}: unusable checkpoint ({cause(e)}); delete {resume} "
                        "to train this stage from the start") from None
    secs = time.perf_counter() - t0
    if trainer.is_world_process_zero():
        write_plot(stage, plot_rows(trainer.state.log_history))
    return {"train_loss": round(mean_loss(trainer.state.log_history), 5), "steps": result.global_step,
            "resumed_from_step": int(CHECKPOINT.fullmatch(resume.name)[1]) if resume else 0,
            "examples": len(trainer.train_dataset), "train_s": round(secs, 2)}


def mean_loss(log_history: list[dict]) -> float:
    """The mean loss over all the run's steps, before a resume too (the trainer's training_loss covers only
    the steps since). Each logged loss is the mean over the steps since the previous log."""
    total, last = 0.0, 0
    for h in log_history:
        if "loss" in h and "step" in h:
            total, last = total + h["loss"] * (h["step"] - last), h["step"]
    return total / max(last, 1)


def save(trainer, out: Path) -> None:
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out)
        trainer.processing_class.save_pretrained(out)


def logged(trainer, key: str, which: int = -1):
    """A value the trainer logged: the last (which=-1) or first (0) time it did; None if never."""
    values = [h[key] for h in trainer.state.log_history if key in h]
    return round(values[which], 5) if values else None


PLOTTED = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "rewards/accuracies", "rewards/margins",
           "accuracy", "reward", "kl", "clip_ratio/region_mean")


def plot_rows(log_history: list[dict]) -> list[dict]:
    """The trainer's logged training steps as plots/<stage>.csv rows."""
    return [{"step": h["step"], **{k.replace("/", "_"): h[k] for k in PLOTTED if k in h}}
            for h in log_history if "loss" in h and "step" in h]
