"""params.yaml as typed, validated objects: one model per section, checked once at load.

Defaults live in params.yaml, not here: every field is required unless it is a derived
quantity whose `null` means "follow the rule" (e.g. model.width from model.depth).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gptpipe.errors import UserError

PARAMS = "params.yaml"


class Section(BaseModel):
    # No inf/nan: `.inf` epochs or token_ratio would pass a `gt=0` check and fail hours later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Marks fields holding local paths or globs (a str or a list of them): Params refuses any outside the
# workspace unless allow_outside_paths is set, so a shared params.yaml cannot make a stage read elsewhere.
LOCAL = "local path"


# ---------------------------------------------------------------- data
class HFSource(Section):
    path: Annotated[str, LOCAL]     # dataset name on the hub, or a builder ("parquet", "json") with data_files
    name: str | None
    split: str
    text_field: str
    data_files: Annotated[str | list[str] | None, LOCAL]
    streaming: bool
    max_docs: int | None = Field(gt=0)


class Data(Section):
    source: Literal["stdlib", "hf"]  # stdlib: the Python standard library's own source, offline
    max_bytes: int = Field(gt=0)     # cap on the corpus size in UTF-8 bytes
    val_fraction: float = Field(gt=0, lt=0.5)
    seed: int
    hf: HFSource


# ---------------------------------------------------------------- chat tasks
class HFChatSource(Section):
    """One `datasets.load_dataset(path, name, split=, data_files=, streaming=)` call, capped at max_rows."""
    path: Annotated[str, LOCAL]     # dataset name on the hub, or a builder ("parquet", "json") with data_files
    name: str | None
    split: str
    data_files: Annotated[str | list[str] | None, LOCAL]
    streaming: bool
    max_rows: int | None = Field(gt=0)   # null = every row


class HFSFT(HFChatSource):
    messages_field: str             # a list of {role, content} messages (system/user/assistant)


class HFPrefs(HFChatSource):
    prompt_field: str | None        # null: chosen/rejected are whole conversations; the last message is the reply
    chosen_field: str
    rejected_field: str
    heldout_fraction: float = Field(gt=0, lt=1)   # share of prompts (by a hash of their text) kept for held-out


class HFRL(HFChatSource):
    question_field: str
    answer_field: str
    answer_pattern: str             # regex finding the final answer in answer_field; its group 1 if it has one
    heldout_fraction: float = Field(gt=0, lt=1)   # share of questions (by a hash) kept for eval.jsonl

    @model_validator(mode="after")
    def _pattern(self):
        try:
            re.compile(self.answer_pattern)
        except (re.error, OverflowError, RecursionError) as e:  # a{9999999999} overflows rather than re.error
            raise ValueError(f"answer_pattern '{self.answer_pattern}' is not a valid regular expression: {e}")
        return self


class TasksHF(Section):
    sft: HFSFT                      # -> sft.jsonl
    prefs: HFPrefs                  # -> prefs_train.jsonl, prefs_heldout.jsonl
    rl: HFRL                        # -> rl.jsonl, eval.jsonl


class Tasks(Section):
    """The chat sets behind SFT, preferences, RL and evaluation: synthetic (gptpipe/tasks.py) or from
    Hugging Face datasets (gptpipe/chat_data.py)."""
    source: Literal["synthetic", "hf"]
    names: list[Literal["compare", "copy", "last_word", "next_number", "reverse"]] = Field(min_length=1)
    train_per_task: int = Field(ge=1)             # SFT and midtrain questions
    rl_per_task: int = Field(ge=1)                # other training-side questions: preference and RL prompts
    heldout_per_task: int = Field(ge=1)
    heldout_fraction: float = Field(gt=0, lt=1)   # share of each task's question space kept for held-out
    multi_turn: float = Field(ge=0, le=1)         # share of SFT conversations with a second exchange
    seed: int                                     # also seeds the hf held-out hash split
    hf: TasksHF | None = None                     # required when source is hf

    @model_validator(mode="after")
    def _hf(self):
        if self.source == "hf" and self.hf is None:
            raise ValueError("tasks.source is hf but tasks.hf is not set: describe the sft, prefs and rl "
                             "datasets under tasks.hf (see the commented example in params.yaml)")
        return self


# ---------------------------------------------------------------- tokenizer
class Tokenizer(Section):
    vocab_size: int = Field(ge=512, le=2**20)   # including the special tokens
    train_chars: int = Field(gt=0)               # train the BPE on (about) this many characters of text
    workers: int = Field(ge=1)                  # encoding processes
    shard_tokens: int = Field(ge=1024)          # tokens per memory-mapped shard file


# ---------------------------------------------------------------- model
class Model(Section):
    depth: int = Field(ge=1, le=128)
    aspect_ratio: int = Field(ge=1)   # width = depth * aspect_ratio (nanochat: 64)
    head_dim: int = Field(ge=8)
    kv_group: int = Field(ge=1)       # query heads per key/value head (GQA); 1 = plain MHA
    max_seq_len: int = Field(ge=8)
    width: int | None = Field(ge=8)   # explicit overrides of the depth rule
    n_head: int | None = Field(ge=1)
    n_kv_head: int | None = Field(ge=1)

    @property
    def d_model(self) -> int:
        return self.width or self.depth * self.aspect_ratio

    @property
    def heads(self) -> int:
        return self.n_head or max(1, self.d_model // self.head_dim)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or max(1, self.heads // self.kv_group)

    @model_validator(mode="after")
    def _shapes(self):
        if self.d_model % self.heads:
            raise ValueError(f"model.n_head ({self.heads}) must divide the width ({self.d_model})")
        if self.heads % self.kv_heads:
            raise ValueError(f"model.n_kv_head ({self.kv_heads}) must divide model.n_head ({self.heads})")
        if (self.d_model // self.heads) % 2:
            raise ValueError(f"head size width/n_head = {self.d_model // self.heads} must be even for RoPE")
        return self


# ---------------------------------------------------------------- training
MEETING = {"rdzv_endpoint", "rdzv_timeout_s"}  # Train keys for where and how long nodes meet: never the bytes


class Train(Section):
    """Our own loop (gptpipe/loop.py): the pretrain and midtrain sections."""
    seq_len: int = Field(ge=8)
    batch_size: int = Field(ge=1)            # sequences per micro-batch per process
    total_batch_tokens: int = Field(ge=8)    # tokens per optimizer step, all processes; sets grad accumulation
    tokens: int | None = Field(gt=0)         # token budget; null = token_ratio * params (Chinchilla)
    token_ratio: float = Field(gt=0)
    lr: float = Field(gt=0, lt=1)
    min_lr_frac: float = Field(ge=0, le=1)
    warmup_steps: int = Field(ge=0)
    schedule: Literal["cosine", "wsd"]
    decay_frac: float = Field(gt=0, le=1)    # wsd: fraction of steps spent decaying
    weight_decay: float = Field(ge=0)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    optimizer: Literal["adamw", "muon"]      # muon: Muon for the blocks' matrices, AdamW (lr) for the rest
    muon_lr: float = Field(gt=0, lt=1)
    muon_momentum: float = Field(ge=0, lt=1)
    grad_clip: float = Field(ge=0)           # 0 = off
    dtype: Literal["auto", "float32", "bfloat16"]  # auto: bf16 on CUDA and on CPUs with AMX or AVX-512 BF16, else fp32
    compile: bool
    deterministic: bool                      # torch's deterministic algorithms: the same inputs make the same bytes
    nproc: int = Field(ge=1)                 # processes per node; >1 launches the stage under torchrun (DDP)
    nnodes: int = Field(ge=1)                # machines; >1: torchrun's c10d rendezvous at rdzv_endpoint
    rdzv_endpoint: str | None                # HOST:PORT on node 0 (the node with GPTPIPE_NODE_RANK=0 or unset)
    rdzv_timeout_s: float = Field(gt=0)      # how long nodes wait for each other, and a node for node 0
    eval_every: int = Field(ge=1)
    eval_tokens: int = Field(ge=1)
    ckpt_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    seed: int

    def budget(self, params: int) -> int:
        """Tokens to train on: `tokens`, or token_ratio per parameter when it is null."""
        return self.tokens or int(self.token_ratio * params)

    @model_validator(mode="after")
    def _batch(self):
        if self.total_batch_tokens % (self.batch_size * self.seq_len * self.nproc * self.nnodes):
            raise ValueError(
                f"total_batch_tokens ({self.total_batch_tokens}) must be a multiple of batch_size * seq_len * "
                f"nproc * nnodes ({self.batch_size} * {self.seq_len} * {self.nproc} * {self.nnodes})")
        return self

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_port(cls, v: str | None):
        host, _, port = (v or "").rpartition(":")
        if v is not None and not (host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{v!r} is not HOST:PORT, e.g. 10.0.0.1:29500 (node 0's address and a free port)")
        return v

    @model_validator(mode="after")
    def _nodes(self):
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(f"nnodes is {self.nnodes} but rdzv_endpoint is not set: set it to node 0's HOST:PORT")
        return self


class Midtrain(Train):
    """Pretrain's loop on a mixture of corpus windows and chat conversations."""
    chat_fraction: float = Field(ge=0, le=1)  # share of each batch's sequences drawn from the conversations


class Post(Section):
    """The HF Trainer knobs every TRL stage shares."""
    lr: float = Field(gt=0, lt=1)
    epochs: float = Field(gt=0)                # may be fractional: 0.25 = a quarter of the data once
    batch_size: int = Field(ge=1)              # per process
    grad_accum: int = Field(ge=1)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    nproc: int = Field(ge=1)                   # >1: relaunched under `accelerate launch`
    ckpt_every: int = Field(ge=0)              # optimizer steps between the checkpoints a rerun resumes from; 0 = none
    seed: int


class Supervised(Post):
    max_length: int = Field(ge=8)              # tokens per example; longer ones are truncated


class SFT(Supervised):
    """TRL SFTTrainer on the task conversations (loss on the assistant's tokens) mixed with corpus text."""
    text_fraction: float = Field(ge=0, lt=1)   # share of the rows that are pretraining text windows


class LoRA(SFT):
    """PEFT LoRA adapters trained with SFTTrainer on top of the frozen SFT model."""
    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)   # e.g. q_proj, v_proj; "all-linear" for every linear


class Reward(Supervised):
    """TRL RewardTrainer: the SFT model with a scalar head, trained on preference pairs."""


class DPO(Supervised):
    """TRL DPOTrainer from SFT, with SFT as the frozen reference."""
    beta: float = Field(gt=0)                  # strength of the pull towards the reference
    sft_weight: float = Field(ge=0)            # weight of an NLL term on the chosen replies (RPO); 0 = plain DPO


class Pairs(Section):
    """Preference pairs for reward and dpo. policy: the SFT model's greedy and sampled replies to the RL prompts,
    labeled by the task checker (on-policy). tasks: the tasks stage's pairs as they are (e.g. a preference dataset)."""
    source: Literal["policy", "tasks"]
    samples: int = Field(ge=1)                 # replies sampled per prompt, besides the greedy one
    max_prompts: int | None = Field(ge=1)      # prompts sampled from, per split (the first ones); null = all
    temperature: float = Field(gt=0)
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)              # prompts per generate call (each with `samples` replies)
    seed: int


class RewardWeights(Section):
    model: float = Field(ge=0)                 # the trained reward model's score
    checker: float = Field(ge=0)               # 1 if the task checker accepts the answer, else 0

    @model_validator(mode="after")
    def _some(self):
        if self.model == 0 and self.checker == 0:
            raise ValueError("at least one of model and checker must be above 0")
        return self


class RL(Post):
    """Online, PPO-style RL from SFT: TRL GRPO (clipped ratio, group-relative advantages) or RLOO."""
    start: Literal["sft", "dpo"]               # the policy RL starts from (and keeps close to)
    algorithm: Literal["grpo", "rloo"]
    num_generations: int = Field(ge=2)         # completions sampled per prompt (the group)
    max_completion_length: int = Field(ge=1)
    temperature: float = Field(gt=0)
    beta: float = Field(ge=0)                  # KL penalty to the SFT policy
    reward_weights: RewardWeights
    filter_prompts: int = Field(ge=0)          # prompts answered first; training keeps those with mixed groups; 0 = all

    @model_validator(mode="after")
    def _groups(self):
        if self.batch_size * self.grad_accum % self.num_generations:
            raise ValueError(f"batch_size x grad_accum ({self.batch_size * self.grad_accum}) must be a multiple "
                             f"of num_generations ({self.num_generations}): each step takes whole groups")
        return self


class Device(Section):
    type: Literal["auto", "cpu", "cuda"]
    threads: int | None = Field(ge=1)        # torch CPU threads; null = torch's default
    peak_flops: float | None = Field(gt=0)   # per device, FLOP/s, for MFU (H100 bf16 dense: 989e12); null = this CPU's


class Evaluate(Section):
    tokens: int | None = Field(ge=1)         # val tokens scored for bits-per-byte, from the start; null = the whole split
    batch_size: int = Field(ge=1)            # val windows (and multiple-choice items) per forward pass
    gen_batch_size: int = Field(ge=1)        # held-out questions answered per generate call
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0)         # 0 = greedy
    top_k: int | None = Field(ge=1)
    top_p: float = Field(gt=0, le=1)
    seed: int
    choice_items: int = Field(ge=0)          # multiple-choice questions per set (held-out tasks, val cloze)
    choices: int = Field(ge=2)               # answers per question, one right
    cloze_context: int = Field(ge=1)         # val-text cloze: tokens of context ...
    cloze_continuation: int = Field(ge=1)    # ... and of each candidate continuation


class Quantize(Section):
    scheme: Literal["int8", "int4"]          # torchao weight-only; int4 needs CUDA
    group_size: int = Field(ge=16)           # int4 only: weights per scale
    bench_tokens: int = Field(ge=1)          # generated tokens timed before and after


class Export(Section):
    model: str                               # the final chat model, quantized and exported: a chat model of dvc.yaml
    gguf: list[Literal["f32", "f16", "q8_0"]] = Field(min_length=1)
    check_new_tokens: int = Field(ge=1)      # greedy tokens compared between llama.cpp and transformers


class Report(Section):
    title: str


class Wandb(Section):
    mode: Literal["offline", "online", "disabled"]  # WANDB_MODE in the environment wins
    project: str


class Flow(Section):
    """Prefect orchestration (flows/): no stage lists it, so changing it reruns nothing."""
    retries: int = Field(ge=0)               # per stage task; bad input (a stage exiting 2) is never retried
    retry_delay_s: float = Field(ge=0)
    lock_timeout_s: float = Field(ge=0)      # how long a run waits for another run on the same workspace
    remote: str | None                       # a DVC remote name: each stage runs on a worker of its pool, sharing
                                             # data through it (flows/dispatch.py); null: every stage runs here
    worker_timeout_s: float = Field(gt=0)    # with a remote: a stage waits this long for a worker of its pool


class Resources(Section):
    """Where each stage runs when flow.remote is set; not a DVC param either."""
    gpus: dict[str, Annotated[int, Field(gt=0)]]   # stage -> GPUs: it runs on a gpu-pool worker; the rest on cpu


class Params(Section):
    data: Data
    tasks: Tasks
    tokenizer: Tokenizer
    model: Model
    pretrain: Train
    midtrain: Midtrain
    sft: SFT
    lora: LoRA
    reward: Reward
    pairs: Pairs
    dpo: DPO
    rl: RL
    device: Device
    evaluate: Evaluate
    quantize: Quantize
    export: Export
    report: Report
    wandb: Wandb
    flow: Flow
    resources: Resources
    # The one default kept in code: params.yaml files written before it existed stay valid, and safe.
    allow_outside_paths: bool = False

    def made_with(self, *sections: str) -> dict:
        """These sections as a checkpoint's key (and the wandb run) record them: all but where nodes meet (MEETING),
        which never changes the bytes, so a killed multi-node run resumes after node 0 moves."""
        return self.model_dump(include=set(sections),
                               exclude={s: MEETING for s in sections if isinstance(getattr(self, s), Train)})

    @model_validator(mode="after")
    def _final_model(self):
        if Path("dvc.yaml").exists():  # in a workspace: a model some stage makes (gptpipe/artifacts.py)
            from gptpipe import artifacts

            chat = artifacts.chat_models()
            if self.export.model not in chat:
                raise ValueError(f"export.model: {self.export.model!r} is not a chat model of dvc.yaml; "
                                 f"choose one of {', '.join(chat)}")
        return self

    @model_validator(mode="after")
    def _confined(self):
        if not self.allow_outside_paths:
            for key, value in local_paths(self):
                if outside_workspace(value):
                    raise ValueError(f"{key}: {value!r} is outside the workspace; move the files under it, or set "
                                     "allow_outside_paths: true in params.yaml to read paths elsewhere")
        return self

    @model_validator(mode="after")
    def _cross(self):
        for name, seq in [("pretrain.seq_len", self.pretrain.seq_len), ("midtrain.seq_len", self.midtrain.seq_len),
                          *[(f"{k}.max_length", getattr(self, k).max_length) for k in ("sft", "lora", "reward", "dpo")],
                          ("rl.max_completion_length", self.rl.max_completion_length),
                          ("evaluate.cloze_context + evaluate.cloze_continuation",
                           self.evaluate.cloze_context + self.evaluate.cloze_continuation)]:
            if seq > self.model.max_seq_len:
                raise ValueError(f"{name} ({seq}) is above model.max_seq_len ({self.model.max_seq_len})")
        return self


def local_paths(section: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, path) for every value of a field marked LOCAL, in `section` and the sections inside it."""
    for name, field in type(section).model_fields.items():
        value, key = getattr(section, name), prefix + name
        if isinstance(value, BaseModel):
            yield from local_paths(value, key + ".")
        elif LOCAL in field.metadata and value is not None:
            yield from ((key, v) for v in ([value] if isinstance(value, str) else value))


def outside_workspace(path: str) -> bool:
    """Absolute, under ~, or climbing out with `..`. URLs (hf://, https://) name no local file; file:// does."""
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", path) and not path.lower().startswith("file://"):
        return False
    p = Path(path[7:] if path.lower().startswith("file://") else path).expanduser()
    return p.is_absolute() or ".." in p.parts


# ---------------------------------------------------------------- loading
def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(assignments: list[str]) -> dict:
    """`--set pretrain.lr=1e-3` (the same dotted keys as `dvc exp run -S`) as a nested dict."""
    over: dict = {}
    for a in assignments:
        key, eq, raw = a.partition("=")
        if not eq or not key:
            raise UserError(f"--set {a!r}: expected KEY=VALUE, e.g. --set pretrain.lr=1e-3")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UserError(f"--set {a!r}: {raw!r} is not a YAML value ({getattr(e, 'problem', None) or e}); "
                            f"quote it: --set '{key}=\"...\"'") from None
        node = over
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {a!r}: an earlier --set gives {part!r} a value, so it has no keys; keep one of the two")
        node[leaf] = value
    return over


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run from the gptpipe workspace root (where params.yaml is)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of sections, got {type(data).__name__}")
    return data


def validate(raw: dict, source: str = PARAMS) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_errors(e, source)) from None


def format_errors(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo? remove it or check the section's keys in params.yaml)"
        elif err["type"] == "missing":
            msg = "missing key: add it to params.yaml"
        elif "input" in err and err["type"] != "value_error":
            msg += f" (got {err['input']!r})"
        lines.append(f"{key}: {msg}" if key else msg)
    head = f"{source}: {len(lines)} invalid param{'s' * (len(lines) > 1)}"
    return head + "\n  " + "\n  ".join(lines)


def load_params(path: str | Path = PARAMS, overrides: list[str] = ()) -> Params:
    raw = read_yaml(path)
    if overrides:
        raw = deep_merge(raw, parse_set(list(overrides)))
    return validate(raw, str(path))
