"""PLMS sampler (Liu et al. 2022, pseudo linear multi-step), with the original `sample(...)` call.

The first step is a pseudo improved-Euler step; later steps use Adams-Bashforth of order 2-4 on the eps history.
"""

from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.sampler_base import StepFn, StepOptions


def plms_eps(e_t: torch.Tensor, old_eps: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the current eps and up to three earlier ones (PNDM eq. 12)."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


class PLMSSampler(DDIMSampler):
    name = "PLMS"

    def timesteps_for(self, S: int | None, ddim_discretize: str, eta: float) -> list[int]:
        if eta != 0:
            raise ValueError("PLMS sampling is deterministic: eta must be 0")
        return super().timesteps_for(S, ddim_discretize, 0.0)

    def make_step(self, timesteps: list[int], options: StepOptions) -> StepFn:
        old_eps: list[torch.Tensor] = []

        def step(x: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t = self.eps(x, ts, cond, options)
            if not old_eps:
                # Pseudo improved Euler: average eps at x_t and at the predicted x_{t-1}.
                x_prev, _ = self.step_from_eps(x, e_t, index, options)
                t_next = torch.full_like(ts, timesteps[min(i + 1, len(timesteps) - 1)])
                e_t_prime = (e_t + self.eps(x_prev, t_next, cond, options)) / 2
            else:
                e_t_prime = plms_eps(e_t, old_eps)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
            return self.step_from_eps(x, e_t_prime, index, options)

        return step
