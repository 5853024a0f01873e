"""Sampling on a CPU: one token per row without torch.multinomial, and batched replies that run each prompt once,
in one process per CPU thread.

torch.multinomial spends ~40 ms on a 256 x 4,096 batch of probabilities on these CPUs (it is RNG-bound); one
uniform per row and a binary search of the cumulative probabilities (inverse CDF) take 0.8 ms and draw from
the same distribution. transformers' generate (GRPO's inside TRL) calls torch.multinomial by name, so
`use_inverse_cdf()` puts `multinomial` in its place in processes without CUDA; `decode` calls it itself.
"""

from __future__ import annotations

import multiprocessing
import signal

import torch

_torch_multinomial = torch.multinomial


def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
    """torch.multinomial; a single draw per row from CPU probabilities by inverse CDF, anything else by torch."""
    if num_samples != 1 or out is not None or input.device.type != "cpu" or input.dim() not in (1, 2):
        return _torch_multinomial(input, num_samples, replacement, generator=generator, out=out)
    cdf = input.float().cumsum(-1)
    u = torch.rand(*cdf.shape[:-1], 1, generator=generator) * cdf[..., -1:]  # the weights need not sum to 1
    return torch.searchsorted(cdf, u, right=True).clamp_(max=input.shape[-1] - 1)  # right: never a weight of 0


def use_inverse_cdf() -> None:
    if not torch.cuda.is_available():
        torch.multinomial = multinomial


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos: int, pad: int,
           temperatures: list[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """New tokens [len(ids) * len(temperatures), <= max_new_tokens] after each left-padded prompt: one row per
    prompt and temperature, in that order, greedy where the temperature is 0 and sampled (from `generator`, else
    torch's global one) elsewhere.

    The prompts are run once and their KV cache copied for each temperature (generate's num_return_sequences
    runs a prompt once per reply, 120 of 250 ms for 64 prompts x 4 here). A row pads after its end-of-turn; the
    loop stops when every row has ended.
    """
    from transformers import DynamicCache

    n = len(temperatures)
    cache, pos = DynamicCache(), (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                   logits_to_keep=1).logits[:, -1].repeat_interleave(n, 0)
    cache.batch_repeat_interleave(n)
    mask, pos = mask.repeat_interleave(n, 0), pos[:, -1:].repeat_interleave(n, 0)
    temps = torch.tensor(temperatures, device=ids.device).repeat(len(ids))[:, None]
    hot = temps[:, 0] > 0
    done, out = torch.zeros(len(mask), dtype=torch.bool, device=ids.device), []
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        if hot.any():
            probs = torch.softmax(logits[hot].float() / temps[hot], -1)
            nxt[hot] = multinomial(probs, 1, generator=generator)[:, 0]
        nxt = nxt.masked_fill(done, pad)
        out.append(nxt)
        done |= nxt == eos
        if done.all():
            break
        mask, pos = torch.cat([mask, mask.new_ones(len(mask), 1)], 1), pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                       past_key_values=cache).logits[:, -1]
    return torch.stack(out, 1)


def replies(model, tok, prompts: list[list[dict]], device, batch: int = 32, max_new_tokens: int = 12,
            k: int = 1, temperature: float = 0.0, greedy: bool = False, seed: int = 0,
            procs: int | None = None) -> list[list[str]]:
    """Replies to each chat prompt: k greedy ones when temperature is 0 (all alike), else k sampled after a greedy
    one if `greedy`. Batched, left-padded, KV cache, each stopping at the end-of-turn token.

    Batch i samples from its own generator, seeded by (seed, i), so the replies do not depend on which process
    decodes it. On a CPU the batches go to `procs` forked processes of one thread each (default: one per thread
    torch has): decoding is small matrices and bookkeeping, which threads share badly; 4,096 prompts x 5 replies
    took 9.9-12.7 s in two processes against 12.4-15.1 s in one of two threads (2-core Zen 4, bench/replies.py).
    """
    global _job
    tok.padding_side = "left"
    model.eval().to(device)
    device = torch.device(device)
    _job = (model, tok, device, max_new_tokens, [0.0] * greedy + [float(temperature)] * k, seed)
    batches = list(enumerate(prompts[i:i + batch] for i in range(0, len(prompts), batch)))
    procs = min(len(batches), procs or (torch.get_num_threads() if device.type == "cpu" else 1))
    try:
        if procs < 2:
            return [r for b in batches for r in _replies(b)]
        pool = multiprocessing.get_context("fork").Pool(procs, initializer=_worker)
        try:
            out = [r for done in pool.imap(_replies, batches) for r in done]
            pool.close()  # each worker exits at its end-of-work sentinel
            pool.join()
            return out
        finally:
            pool.terminate()  # on an error or an interrupt: SIGTERM to the workers
    finally:
        _job = ()


_job: tuple = ()  # (model, tok, device, max_new_tokens, temperatures, seed): what `replies` decodes, forked workers too


def _worker() -> None:
    """A forked worker: one thread; SIGTERM ends it, whatever handler it inherited (a server in the process, uvicorn
    or Prefect, may catch SIGTERM and carry on), and Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _replies(batch: tuple[int, list]) -> list[list[str]]:
    i, prompts = batch
    model, tok, device, max_new_tokens, temps, seed = _job
    enc = tok.apply_chat_template(prompts, add_generation_prompt=True, padding=True, return_tensors="pt",
                                  return_dict=True).to(device)
    generator = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
    new = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens, tok.eos_token_id,
                 tok.pad_token_id, temps, generator)
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return [texts[j:j + len(temps)] for j in range(0, len(texts), len(temps))]
