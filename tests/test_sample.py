"""The inverse-CDF stand-in for torch.multinomial: same distribution, same shapes, never a weight of 0."""

import torch

from gptpipe import sample


def test_draws_follow_the_weights_and_skip_zero_weights():
    weights = torch.tensor([0.0, 1.0, 0.0, 2.0, 7.0, 0.0])  # unnormalized, zeros at both ends and between
    torch.manual_seed(0)
    draws = sample.multinomial(weights.expand(100_000, -1), 1)
    assert draws.shape == (100_000, 1) and draws.dtype == torch.int64
    freq = torch.bincount(draws[:, 0], minlength=6) / 100_000
    assert freq[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(freq[[1, 3, 4]], torch.tensor([0.1, 0.2, 0.7]), atol=0.005, rtol=0)  # 5 SE of 0.7's


def test_shapes_seeding_and_what_it_leaves_to_torch():
    p = torch.tensor([0.5, 0.5])
    assert sample.multinomial(p, 1).shape == torch.multinomial(p, 1).shape == (1,)
    g = torch.Generator().manual_seed(3)
    first = sample.multinomial(torch.ones(8, 50), 1, generator=g)
    assert torch.equal(first, sample.multinomial(torch.ones(8, 50), 1, generator=g.manual_seed(3)))
    two = sample.multinomial(torch.ones(4, 10), 2)  # more than one draw per row: torch's own
    assert two.shape == (4, 2) and all(len(set(r.tolist())) == 2 for r in two)


def test_decode_matches_generate_and_shares_each_prompts_cache(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok.padding_side = "left"
    enc = tok(["def f(x):", "import os", "class A(object): pass"], return_tensors="pt", padding=True)
    args = (enc["input_ids"], enc["attention_mask"], 6, tok.eos_token_id, tok.pad_token_id)
    greedy = sample.decode(model, *args, [0.0])
    want = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(greedy, want[:, enc["input_ids"].shape[1]:][:, :greedy.shape[1]])
    torch.manual_seed(0)
    mixed = sample.decode(model, *args, [0.0, 1.0, 1e-4])  # per prompt: greedy, sampled, sampled nearly greedy
    torch.manual_seed(0)
    assert torch.equal(mixed, sample.decode(model, *args, [0.0, 1.0, 1e-4]))
    assert torch.equal(mixed[0::3], greedy) and torch.equal(mixed[2::3], greedy)  # each row reads its own prompt
    assert not torch.equal(mixed[1::3], greedy)


def test_replies_are_the_same_from_one_process_or_several(tiny_model):
    """Each batch samples from its own seeded generator, so forked workers give the replies one process gives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptpipe import tasks

    tok, model = AutoTokenizer.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts = [[tasks.user(f"Repeat after me: {w} {i}")] for i, w in enumerate(["oak", "elm", "yew", "ash"] * 3)]
    ask = dict(batch=5, max_new_tokens=6, k=3, temperature=1.0, greedy=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' numerics
    try:
        one = sample.replies(model, tok, prompts, "cpu", **ask, seed=7, procs=1)
    finally:
        torch.set_num_threads(threads)
    assert len(one) == len(prompts) and all(len(r) == 4 for r in one)
    assert sample.replies(model, tok, prompts, "cpu", **ask, seed=7, procs=3) == one
    assert sample.replies(model, tok, prompts, "cpu", **ask, seed=8, procs=2) != one


def test_replies_end_their_workers_whatever_sigterm_handler_the_process_has(tiny_model):
    """A server in the process (uvicorn, Prefect) may catch SIGTERM and carry on: the pool must not need SIGTERM to
    end its workers once the work is done (it hung on join that way)."""
    import subprocess
    import sys

    code = (f"import signal, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"from gptpipe import sample, tasks\n"
            f"signal.signal(signal.SIGTERM, lambda *a: None)\n"
            f"tok = AutoTokenizer.from_pretrained({str(tiny_model)!r})\n"
            f"model = AutoModelForCausalLM.from_pretrained({str(tiny_model)!r})\n"
            f"for _ in range(30):\n"
            f"    out = sample.replies(model, tok, [[tasks.user(str(i))] for i in range(8)], 'cpu', 2, 4, procs=2)\n"
            f"import multiprocessing; print(len(out), len(multiprocessing.active_children()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["8", "0"], "every reply, and no worker left"
