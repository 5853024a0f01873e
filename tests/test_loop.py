"""The training loop on a real tiny Llama: schedules, learning, the NaN guard, exact resume."""

import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from gptpipe import ckpt, dist, loop
from gptpipe.config import Device
from gptpipe.model import llama_config
from gptpipe.shards import Shards

CPU = Device(type="cpu", threads=None, peak_flops=1e11)


def lrs(t, steps):
    return [loop.lr_at(s, steps, t) for s in range(steps)]


def test_schedules(micro_data):
    p, _ = micro_data
    t = p.pretrain.model_copy(update={"warmup_steps": 10, "lr": 1.0, "min_lr_frac": 0.1})
    cos = lrs(t, 100)
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[9:], cos[10:])) and cos[-1] == pytest.approx(0.1, abs=1e-3)
    wsd = lrs(t.model_copy(update={"schedule": "wsd", "decay_frac": 0.2}), 100)
    assert wsd[10:80] == [1.0] * 70 and wsd[-1] == pytest.approx(0.1)


def setup_run(micro_data, tmp_path, monkeypatch, **train_kw):
    p, dirs = micro_data
    monkeypatch.chdir(tmp_path)
    t = p.pretrain.model_copy(update=train_kw)
    data, val = Shards(dirs["tokens"], "train"), Shards(dirs["tokens"], "val")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(p.model, data.vocab_size))

    def batch_fn(step, micro):
        return data.sample(t.batch_size, t.seq_len, np.random.default_rng([t.seed, step, micro]))

    kw = dict(stage="pretrain", batch_fn=batch_fn, val_windows=list(val.windows(t.seq_len, 2048)),
              total_tokens=t.total_batch_tokens * 30, flops_per_token=1e6, peak_flops=1e11, key="k")
    return model, t, kw


def test_loss_goes_down_and_artifacts_are_written(micro_data, tmp_path, monkeypatch):
    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch)
    m = loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / "ck", **kw))
    rows = (tmp_path / "plots/pretrain.csv").read_text().splitlines()
    first_loss = float(rows[1].split(",")[2])
    assert m["steps"] == 30 and m["final_loss"] < first_loss - 0.5 and m["val_loss"] is not None
    assert m["tokens_per_s"] > 0 and 0 < m["mfu"]
    events = [json.loads(line)["event"] for line in open(tmp_path / "logs/pretrain.jsonl")]
    assert events[0] == "start" and events[-1] == "end"


def test_compiled_step_trains_like_eager(micro_data, tmp_path, monkeypatch):
    """pretrain.compile (the default on CPU too: 1.2-1.3x tokens/s at the default size) is the same math."""
    runs = {}
    for compiled in (False, True):
        (tmp_path / str(compiled)).mkdir()
        model, t, kw = setup_run(micro_data, tmp_path / str(compiled), monkeypatch, compile=compiled)
        kw["total_tokens"] = t.total_batch_tokens * 4
        runs[compiled] = loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / str(compiled) / "ck", **kw))
    assert runs[True]["final_loss"] == pytest.approx(runs[False]["final_loss"], rel=1e-4)
    assert runs[True]["val_loss"] == pytest.approx(runs[False]["val_loss"], rel=1e-4)


def test_two_compiled_runs_give_the_same_bytes(micro_data, tmp_path, monkeypatch):
    """pretrain.deterministic: compiled CPU kernels would otherwise sum in thread order (the default pretrain's
    weights differed run to run); with it the same inputs make the same weights, bit for bit."""
    weights = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        model, t, kw = setup_run(micro_data, tmp_path / run, monkeypatch, compile=True, deterministic=True)
        kw["total_tokens"] = t.total_batch_tokens * 6
        loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / run / "ck", **kw))
        weights.append(b"".join(v.numpy().tobytes() for v in model.state_dict().values()))
    assert weights[0] == weights[1]


def test_nan_loss_stops_with_the_last_good_checkpoint(micro_data, tmp_path, monkeypatch):
    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch, ckpt_every=5)
    calls = {"n": 0}
    accum = t.total_batch_tokens // (t.batch_size * t.seq_len)

    def poison(module, args, output):  # a fault from step 8 on: logits become NaN
        calls["n"] += module.training
        if calls["n"] > 8 * accum:
            output.logits = output.logits * float("nan")
        return output

    model.register_forward_hook(poison)
    with pytest.raises(loop.NonFiniteLoss, match=r"loss became nan at step 8.*step_0000005.*Lower pretrain.lr"):
        loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / "ck", **kw))
    assert not (tmp_path / "plots/pretrain.csv").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])  # Muon's momentum is in the checkpoint too
def test_crash_and_resume_matches_an_uninterrupted_run(micro_data, tmp_path, monkeypatch, optimizer):
    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch, ckpt_every=10, optimizer=optimizer)
    m = loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / "straight", **kw))
    first_loss = float((tmp_path / "plots/pretrain.csv").read_text().splitlines()[1].split(",")[2])
    assert m["final_loss"] < first_loss - 0.5
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch, ckpt_every=10, optimizer=optimizer)
    good = kw["batch_fn"]

    def crash_at_step_15(step, micro):
        if step == 15:
            raise KeyboardInterrupt  # the process dies mid-run
        return good(step, micro)

    with pytest.raises(KeyboardInterrupt):
        loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / "ck", **(kw | {"batch_fn": crash_at_step_15})))
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step_0000010"]

    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch, ckpt_every=10, optimizer=optimizer)  # a fresh process
    m = loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / "ck", **kw))
    assert m["resumed_from_step"] == 10
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, reference[k], rtol=0, atol=0)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(micro_data, tmp_path, monkeypatch):
    model, t, _ = setup_run(micro_data, tmp_path, monkeypatch, optimizer="muon")
    hidden, groups = loop.param_groups(model, t)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)].split(".")[-2] for p in hidden}
    assert muon == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(hidden) == 7 * len(model.model.layers)
    decayed, plain = ({names[id(p)] for p in g["params"]} for g in groups)
    assert decayed == {"model.embed_tokens.weight", "lm_head.weight"} and all("norm" in n for n in plain)
    assert len(hidden) + len(decayed) + len(plain) == len(list(model.parameters())), "every parameter, once"
    assert loop.param_groups(model, t.model_copy(update={"optimizer": "adamw"}))[0] == []
    opt = loop.make_optimizer(model, t, torch.device("cpu"))
    assert [type(o).__name__ for o in opt.opts] == ["AdamW", "Muon"]
    assert sorted(g["base_lr"] for g in opt.param_groups) == [t.lr, t.lr, t.muon_lr]


def test_checkpoint_of_other_params_is_ignored(micro_data, tmp_path, monkeypatch):
    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch)
    opt = loop.make_optimizer(model, t, torch.device("cpu"))
    ckpt.save(tmp_path / "ck", 10, model, opt, {"key": "old-params", "history": []})
    assert ckpt.latest(tmp_path / "ck", "old-params") is not None
    assert ckpt.latest(tmp_path / "ck", "new-params") is None
    (tmp_path / "ck" / ".tmp_step_0000020").mkdir()  # an interrupted save is never picked
    assert ckpt.latest(tmp_path / "ck", "old-params").name == "step_0000010"


def test_bf16_on_cpu_keeps_attention_in_fp32_and_gives_it_back(micro_data, tmp_path, monkeypatch):
    """pretrain.dtype bfloat16 on CPU: the matmuls run in bf16 (AMX or AVX-512 BF16), attention in fp32 (its bf16
    backward was the slowest op); the model leaves the loop with the attention it came with, and its config never
    names ours."""
    from transformers.integrations import sdpa_attention

    from gptpipe.model import FP32_ATTENTION

    seen = []

    def recording(module, q, k, v, mask, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(module, q, k, v, mask, **kw)

    sdpa = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", recording)
    model, t, kw = setup_run(micro_data, tmp_path, monkeypatch, dtype="bfloat16", compile=False)
    m = loop.train(model, t, dist.setup(CPU), loop.Run(ckpt_root=tmp_path / "ck", **kw))
    assert seen and set(seen) == {(torch.float32,) * 3 + (False,)}
    first_loss = float((tmp_path / "plots/pretrain.csv").read_text().splitlines()[1].split(",")[2])
    assert m["final_loss"] < first_loss - 0.5
    assert model.config._attn_implementation == "sdpa" and model.lm_head.weight.dtype == torch.float32
    model.save_pretrained(tmp_path / "out")
    assert FP32_ATTENTION not in (tmp_path / "out/config.json").read_text()


@pytest.mark.parametrize("amx,avx512_bf16", [(True, True), (True, False), (False, True), (False, False)])
def test_auto_dtype_is_bf16_on_cuda_and_on_cpus_with_bf16_matrix_instructions(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert dist.bf16("auto", "cpu") is (amx or avx512_bf16) and dist.bf16("auto", "cuda")
    assert not dist.bf16("float32", "cuda") and dist.bf16("bfloat16", "cpu")
