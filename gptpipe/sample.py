"""One token per row sampled on a CPU without torch.multinomial, which took half of a sampled generate.

torch.multinomial spends ~40 ms on a 256 x 4,096 batch of probabilities on these CPUs (it is RNG-bound); one
uniform per row and a binary search of the cumulative probabilities (inverse CDF) take 0.8 ms and draw from
the same distribution. transformers' generate (ours, and GRPO's inside TRL) calls torch.multinomial by name,
so `use_inverse_cdf()` puts `multinomial` in its place in processes without CUDA.
"""

from __future__ import annotations

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
