"""Classifier-free guidance (Ho & Salimans 2022): eps = eps(x, uc) + s * (eps(x, c) - eps(x, uc))."""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_eps(
    eps_fn: EpsFn,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Noise prediction with CFG in one batched pass over [uc, c], as the original; no CFG when scale == 1.

    x: [B, C, h, w]; t: [B]; cond, uncond: [B, 77, D].
    """
    if uncond is None or scale == 1.0:
        return eps_fn(x, t, cond)
    x_in = torch.cat([x, x])  # [2B, C, h, w]
    t_in = torch.cat([t, t])
    if isinstance(cond, dict):
        c_in = {k: [torch.cat([uncond[k][i], cond[k][i]]) for i in range(len(cond[k]))] for k in cond}
    else:
        c_in = torch.cat([uncond, cond])
    eps_uncond, eps_cond = eps_fn(x_in, t_in, c_in).chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)
