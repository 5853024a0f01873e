"""Midtraining and SFT on a real tiny model: the chat stream, assistant-only labels, learning, accuracy."""

import importlib
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from gptpipe import dist, evaluate, midtrain, tasks
from gptpipe.config import Device
from gptpipe.dist import Proc
from gptpipe.io import read_jsonl
from gptpipe.model import llama_config, save
from gptpipe.post import sft

PROC = Proc(0, 1, 0, torch.device("cpu"))
CPU = Device(type="cpu", threads=None, peak_flops=1e11)


@pytest.fixture(scope="module")
def base(micro_data, tmp_path_factory):
    p, dirs = micro_data
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base")
    save(LlamaForCausalLM(llama_config(p.model, p.tokenizer.vocab_size)), AutoTokenizer.from_pretrained(dirs["tokenizer"]), out)
    return out


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    sets = tasks.build(["copy"], 40, 10, 0.2, 0.0, seed=0)
    d = tmp_path_factory.mktemp("tasks")
    for name, rows in sets.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_chat_stream_renders_every_conversation(base, chat):
    tok = AutoTokenizer.from_pretrained(base)
    rows = read_jsonl(chat / "sft.jsonl", made_by="tasks")
    stream = midtrain.chat_stream(tok, rows)
    assert (stream == tok.bos_token_id).sum() == len(rows)
    assert tok.decode(stream[:30]).startswith("<|bos|><|user_start|>Repeat after me:\n")


def test_midtrain_mixes_chat_into_the_loop(micro_data, base, chat, tmp_path, monkeypatch):
    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    m = midtrain.run(p, dist.setup(CPU), base=base, tokens=dirs["tokens"], conversations=chat / "sft.jsonl",
                     out=tmp_path, ckpt_root=tmp_path / "ck")
    assert m["steps"] == p.midtrain.tokens // p.midtrain.total_batch_tokens and m["chat_tokens"] > 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "llama"
    # Where the nodes meet is no part of the checkpoint key: a rerun after node 0 moved resumes.
    moved = p.model_copy(update={"midtrain": p.midtrain.model_copy(update={"rdzv_endpoint": "10.0.0.2:29500"})})
    m = midtrain.run(moved, dist.setup(CPU), base=base, tokens=dirs["tokens"], conversations=chat / "sft.jsonl",
                     out=None, ckpt_root=tmp_path / "ck")
    assert m["resumed_from_step"] == p.midtrain.ckpt_every


def test_sft_labels_the_reply_of_conversations_and_all_of_the_text(micro_data, base, chat, tmp_path, monkeypatch):
    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    s = p.sft.model_copy(update={"text_fraction": 0.25, "max_length": 64})
    trainer = sft.make_trainer(s, p.wandb, policy=base, conversations=chat / "sft.jsonl", tokens=dirs["tokens"])
    tok, rows = trainer.processing_class, trainer.train_dataset
    n_chat = len(read_jsonl(chat / "sft.jsonl", made_by="tasks"))
    assert len(rows) == n_chat + round(n_chat / 3)  # a quarter of all rows is text
    conversations, text = 0, 0
    for r in rows:
        ids, labels = torch.tensor(r["input_ids"]), torch.tensor(r["labels"])
        if ids[0] == tok.bos_token_id and tok.convert_tokens_to_ids("<|user_start|>") in ids:
            words = tok.decode(ids).split("Repeat after me:\n")[1].split("<|user_end|>")[0]
            assert tok.decode(ids[labels != -100]) == f"{words}<|assistant_end|>"
            conversations += 1
        else:  # a corpus window: every token counts
            assert torch.equal(ids, labels) and len(ids) == 64
            text += 1
    assert (conversations, text) == (n_chat, round(n_chat / 3))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] != -100).any()


def test_sft_learns_and_is_scored_by_exact_match(micro_data, base, chat, tmp_path, monkeypatch):
    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    s = p.sft.model_copy(update={"epochs": 30, "lr": 0.01, "batch_size": 8, "text_fraction": 0.0})
    m = sft.train(p.model_copy(update={"sft": s}), PROC, policy=base, conversations=chat / "sft.jsonl", tokens=dirs["tokens"], out=tmp_path / "sft")
    assert m["train_loss"] < 3 and (tmp_path / "plots/sft.csv").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    tok = AutoTokenizer.from_pretrained(tmp_path / "sft")
    train_rows = [{"task": "copy", "prompt": r["messages"][:1], "answer": r["messages"][1]["content"]}
                  for r in read_jsonl(chat / "sft.jsonl", made_by="tasks")]  # its own questions: a micro model memorizes
    rows, samples, hits = evaluate.task_accuracy(model, tok, train_rows, "cpu", "sft")
    before, _, _ = evaluate.task_accuracy(AutoModelForCausalLM.from_pretrained(base), tok, train_rows, "cpu", "base")
    after = {r["task"]: r for r in rows}
    assert after["tasks"]["n"] == len(train_rows) and after["copy"]["stderr"] is not None
    assert before[-1]["value"] == 0 and after["copy"]["value"] >= 0.25  # it learned to copy
    assert samples[0]["model"] == "sft" and len(hits) == len(train_rows) and sum(hits) / len(hits) == after["tasks"]["value"]


# ---------------------------------------------------------------- lora, reward, dpo, rl
@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # trainers write plots/ and checkpoints/ relative to the workspace
    return tmp_path


def test_lora_saves_an_adapter_peft_reloads_and_a_merged_model(micro_data, base, chat, cwd):
    from peft import PeftModel

    from gptpipe.post import lora

    p, dirs = micro_data
    m = lora.train(p, PROC, policy=base, conversations=chat / "sft.jsonl", tokens=dirs["tokens"], out=cwd / "lora",
                  adapter=cwd / "adapter")
    assert 0 < m["trainable_params"] < m["total_params"] and m["trainable_fraction"] < 0.2
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), cwd / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(cwd / "lora")
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(base)(ids).logits, merged(ids).logits)


def test_reward_model_learns_to_rank_the_pairs(micro_data, base, chat, cwd):
    from transformers import AutoModelForSequenceClassification

    from gptpipe.post import reward

    p, _ = micro_data
    pairs = read_jsonl(chat / "prefs_train.jsonl", made_by="tasks")
    tok, untrained = reward.load(base, fresh_head=True)
    before, n = evaluate.pairwise_accuracy(untrained, tok, pairs, "cpu")
    s = p.reward.model_copy(update={"epochs": 20, "lr": 0.005, "batch_size": 8})
    m = reward.train(p.model_copy(update={"reward": s}), PROC, policy=base, pairs=chat / "prefs_train.jsonl", out=cwd / "rm")
    assert type(AutoModelForSequenceClassification.from_pretrained(cwd / "rm")).__name__ == "LlamaForSequenceClassification"
    after, _ = evaluate.pairwise_accuracy(*reversed(reward.load(cwd / "rm")), pairs, "cpu")
    assert n == len(pairs) and after >= 0.8 > before and m["steps"] > 0


def test_dpo_moves_probability_towards_the_chosen_replies(micro_data, base, chat, cwd):
    from gptpipe.post import dpo

    p, _ = micro_data
    pairs = read_jsonl(chat / "prefs_train.jsonl", made_by="tasks")

    def margin(model_dir) -> float:  # mean log p(chosen) - log p(rejected) of the reply tokens
        tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
        total = 0.0
        for r in pairs[:20]:
            for sign, side in ((1, "chosen"), (-1, "rejected")):
                ids = lambda msgs, **kw: tok(tok.apply_chat_template(msgs, tokenize=False, **kw),
                                             add_special_tokens=False).input_ids
                prompt, full = ids(r["prompt"], add_generation_prompt=True), ids(r["prompt"] + r[side])
                logp = model(torch.tensor([full])).logits[0, :-1].log_softmax(-1)
                total += sign * sum(logp[i - 1, full[i]].item() for i in range(len(prompt), len(full)))
        return total / 20

    s = p.dpo.model_copy(update={"epochs": 5, "lr": 0.005, "batch_size": 8})
    m = dpo.train(p.model_copy(update={"dpo": s}), PROC, policy=base, pairs=chat / "prefs_train.jsonl", out=cwd / "dpo")
    assert margin(cwd / "dpo") > margin(base) + 1 and m["reward_accuracy"] is not None


@pytest.mark.parametrize("temperature, softcap", [(1.0, None), (0.7, 30.0)])
def test_plain_lm_head_gives_what_trls_chunked_kernel_gives(temperature, softcap, monkeypatch):
    """Same log-probabilities, entropy, flags and gradients as TRL's kernel, which it stands in for on a CPU; past
    its LIMIT it hands over to the kernel."""
    from trl.trainer import utils

    from gptpipe.post.common import PlainLMHead, use_plain_lm_head

    use_plain_lm_head()
    assert utils._ChunkedLogProbFunction is PlainLMHead and PlainLMHead.chunked is not None
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(96, 16, generator=g), torch.randn(200, 16, generator=g)
    targets = torch.randint(0, 200, (96,), generator=g)
    targets[::2] = (hidden @ weight.T).argmax(-1)[::2]  # half of them the top-1 token
    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")

    def run(fn):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = fn.apply(h, w, None, targets, temperature, 64, softcap, 1.0, outputs)
        (-out[0].sum() + 0.1 * out[1].sum()).backward()
        return out, (h.grad, w.grad)

    (plain, plain_grads), (chunked, chunked_grads) = run(PlainLMHead), run(PlainLMHead.chunked)
    for a, b in zip(plain + plain_grads, chunked + chunked_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert plain[4].any() and not plain[4].all()
    monkeypatch.setattr(PlainLMHead, "LIMIT", 96 * 200 - 1)
    monkeypatch.setattr(PlainLMHead, "chunked", type("Kernel", (), {"apply": staticmethod(lambda *a: "kernel")}))
    assert PlainLMHead.apply(hidden, weight, None, targets, 1.0, 64) == "kernel"


def test_trl_scores_only_the_labelled_positions_on_a_cpu(monkeypatch):
    """With PlainLMHead installed, TRL's fused forward hands the head only the positions that have a label, and
    their log-probabilities are the model's own; unlabelled positions read 0."""
    from trl.trainer.utils import add_fused_lm_head

    from gptpipe.post.common import PlainLMHead, use_plain_lm_head

    use_plain_lm_head()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    ids = torch.randint(0, 64, (2, 10))
    labels = ids.clone()
    labels[:, :7] = -100  # a prompt: only the last 3 tokens of each row are scored
    with torch.no_grad():
        want = model(ids).logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    rows = []
    apply = PlainLMHead.apply
    monkeypatch.setattr(PlainLMHead, "apply", staticmethod(lambda h, *a: rows.append(h.shape[0]) or apply(h, *a)))
    add_fused_lm_head(model)
    out = model(ids, labels=labels, fused_lm_head=True)
    mask = labels[:, 1:] != -100
    assert rows == [int(mask.sum())] == [6]
    torch.testing.assert_close(out.log_probs[mask], want[mask])
    assert (out.log_probs[~mask] == 0).all()
    out.loss.backward()  # the scattered log-probabilities stay connected to the model


def test_checker_reward_scores_the_reply_by_exact_match():
    from gptpipe.post.rl import checker

    done = [[{"role": "assistant", "content": "blue"}], [{"role": "assistant", "content": "blue.\nmore"}],
            [{"role": "assistant", "content": "red"}]]
    assert checker(done, answer=["blue", "blue", "blue"]) == [1.0, 1.0, 0.0]


def test_mixed_keeps_the_prompts_whose_group_disagrees():
    from gptpipe.post.rl import mixed

    rows = [{"prompt": q, "answer": "x"} for q in "abc"]
    assert mixed(rows, [["x", "y"], ["x.", " x"], ["y", "z"]]) == rows[:1]  # b always right, c never


def test_rl_trains_on_the_prompts_its_policy_gets_right_sometimes(micro_data, tiny_model):
    from gptpipe import sample
    from gptpipe.post.rl import informative
    from gptpipe.tasks import user

    p, _ = micro_data
    tok, model = AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model)
    s = p.rl.model_copy(update={"filter_prompts": 6, "num_generations": 4, "temperature": 1.0})
    rows = [{"task": "t", "prompt": [user(f"question {i}")], "answer": "no reply says this"} for i in range(8)]
    torch.manual_seed(s.seed)  # the replies the filter will see: rig two rows to be right once, or more but not always
    seen = sample.replies(model, tok, [r["prompt"] for r in rows[:6]], "cpu", 64, s.max_completion_length, k=4, temperature=1.0)
    rigged = [i for i, texts in enumerate(seen) if texts[0].strip() and len({t.strip() for t in texts}) > 1][:2]
    for i in rigged:
        rows[i]["answer"] = seen[i][0].strip().splitlines()[0].rstrip(".").strip()
    kept, counts = informative(s, model, tok, rows, "cpu")
    assert len(rigged) == 2 and kept == [rows[i] for i in rigged]
    assert counts == {"prompts_sampled": 6, "prompts_mixed": 2}
    for r in rows:
        r["answer"] = "no reply says this"
    assert informative(s, model, tok, rows, "cpu") == (rows, {"prompts_sampled": 6, "prompts_mixed": 0})  # none: all
    assert informative(s.model_copy(update={"filter_prompts": 0}), model, tok, rows, "cpu") == (rows, {})


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_trains_with_reward_model_and_checker_and_logs_kl_and_clipping(micro_data, base, chat, cwd, algorithm):
    from gptpipe.post import reward, rl

    p, _ = micro_data
    rm = cwd / "rm0"  # a stand-in reward model: the base with an untrained score head, saved as the stage does
    for part in reward.load(base, fresh_head=True):
        part.save_pretrained(rm)
    both = p.rl.reward_weights.model_copy(update={"model": 1.0, "checker": 1.0})  # the default leaves the model out
    s = p.rl.model_copy(update={"algorithm": algorithm, "epochs": 0.5, "reward_weights": both, "filter_prompts": 16})
    m = rl.train(p.model_copy(update={"rl": s}), PROC, policy=base, reward_model=rm, prompts=chat / "rl.jsonl", out=cwd / "rl")
    assert m["algorithm"] == algorithm and m["steps"] > 0 and m["kl_last"] is not None and m["prompts_sampled"] == 16
    assert m["reward_last"] is not None and (m["clip_ratio_last"] is not None or algorithm == "rloo")
    assert "reward" in (cwd / "plots/rl.csv").read_text().splitlines()[0]
    assert AutoModelForCausalLM.from_pretrained(cwd / "rl").config.model_type == "llama"


@pytest.mark.parametrize("change, words", [
    ({"rl": {"num_generations": 3}}, "multiple of num_generations"),
    ({"rl": {"reward_weights": {"model": 0, "checker": 0}}}, "rl.reward_weights"),
    ({"rl": {"algorithm": "ppo"}}, "rl.algorithm"),
    ({"dpo": {"beta": 0}}, "dpo.beta"),
    ({"lora": {"target_modules": []}}, "lora.target_modules"),
    ({"reward": {"max_length": 4096}}, "reward.max_length (4096) is above model.max_seq_len"),
])
def test_post_training_params_are_validated(change, words):
    from gptpipe.config import deep_merge, read_yaml, validate
    from gptpipe.errors import UserError
    from conftest import REPO

    with pytest.raises(UserError) as e:
        validate(deep_merge(read_yaml(REPO / "params.yaml"), change))
    assert words in str(e.value)


# ---------------------------------------------------------------- checkpoints and resume
def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    from gptpipe.post.common import last_checkpoint

    for step, state in ((4, "{}"), (6, "{}"), (8, '{"log_hist'), (10, None)):  # 8 and 10: cut short by a kill
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}/trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert last_checkpoint(tmp_path / "none") is None


def test_checkpoints_are_keyed_by_the_params_and_the_input_bytes(micro_data, tmp_path):
    from gptpipe.post.common import ckpt_dir

    p, _ = micro_data
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy/model.safetensors").write_bytes(b"weights")
    (tmp_path / "sft.jsonl").write_text("{}\n")
    key = lambda s: ckpt_dir("sft", s, (tmp_path / "policy", tmp_path / "sft.jsonl"))
    first = key(p.sft)
    assert key(p.sft) == first and first.parent.as_posix() == "checkpoints/sft"
    assert key(p.sft.model_copy(update={"lr": 0.1})) != first
    (tmp_path / "policy/model.safetensors").write_bytes(b"other weights")
    assert key(p.sft) != first


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["lora", "reward", "dpo", "rl"])
def test_a_crashed_trl_stage_resumes_and_ends_like_an_uninterrupted_run(micro_data, base, chat, cwd, monkeypatch,
                                                                         stage):
    """(sft: tests/e2e/test_kill_resume.py, with a real SIGKILL.)"""
    from transformers import TrainerCallback

    from gptpipe.post import common, reward

    p, _ = micro_data
    rm = cwd / "rm0"  # a stand-in reward model for rl, as in the rl test
    for part in reward.load(base, fresh_head=True):
        part.save_pretrained(rm)
    module = importlib.import_module(f"gptpipe.post.{stage}")
    s = getattr(p, stage).model_copy(update={"ckpt_every": 2, "epochs": 0.5 if stage == "rl" else 3})
    inputs = {"lora": dict(conversations=chat / "sft.jsonl", tokens=micro_data[1]["tokens"]), "reward": dict(pairs=chat / "prefs_train.jsonl"),
              "dpo": dict(pairs=chat / "prefs_train.jsonl"), "rl": dict(reward_model=rm, prompts=chat / "rl.jsonl")}
    extra = lambda out: {"adapter": cwd / f"{out}-adapter"} if stage == "lora" else {}
    train = lambda out: module.train(p.model_copy(update={stage: s}), PROC, policy=base, out=cwd / out,
                                     **inputs[stage], **extra(out))
    ref = train("ref")
    shutil.rmtree(cwd / "checkpoints")

    class CrashAfterCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Crash

    def crashing_fit(trainer, name):
        trainer.add_callback(CrashAfterCheckpoint)
        return common.fit(trainer, name)

    with monkeypatch.context() as mp, pytest.raises(Crash):
        mp.setattr(module, "fit", crashing_fit)
        train("crashed")
    m = train("resumed")
    assert m["resumed_from_step"] == 2 and m["steps"] == ref["steps"] > 3
    for key, value in ref.items():
        if key not in ("resumed_from_step", "train_s", "tokens_per_s"):
            assert m[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize("bf16", [True, False])
def test_trainers_take_bf16_with_fp32_attention_on_a_cpu_with_bf16_matrix_instructions(micro_data, base, bf16,
                                                                                       monkeypatch):
    """The TRL stages follow pretrain.dtype's auto rule: bf16 autocast on a CPU with AMX or AVX-512 BF16 (SFT and
    DPO trained 1.3-1.4x faster on AMX), with attention kept in fp32; fp32 everywhere on other CPUs."""
    from gptpipe import dist
    from gptpipe.model import FP32_ATTENTION
    from gptpipe.post import common

    monkeypatch.setattr(dist, "cpu_bf16", lambda: bf16)
    _, model = common.load_policy(base)
    assert model.config._attn_implementation == (FP32_ATTENTION if bf16 else "sdpa")
    p = micro_data[0]
    assert common.trainer_args(p.sft, p.wandb, "sft", base)["bf16"] is bf16
