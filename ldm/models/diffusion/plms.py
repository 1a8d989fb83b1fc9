"""PLMS sampler (Liu et al. 2022, pseudo linear multi-step), with the original `sample(...)` call.

The first step is a pseudo improved-Euler step; later steps use Adams-Bashforth of order 2-4 on the eps history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.guidance.base import LatentGuidance


def plms_eps(e_t: torch.Tensor, old_eps: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the current eps and up to three earlier ones (PNDM eq. 12)."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


class PLMSSampler(DDIMSampler):
    name = "PLMS"

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, int, int],
        conditioning: Any = None,
        callback: Callable | None = None,
        normals_sequence: Any = None,
        img_callback: Callable | None = None,
        quantize_x0: bool = False,
        eta: float = 0.0,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
        verbose: bool = True,
        x_T: torch.Tensor | None = None,
        log_every_t: int = 100,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Any = None,
        ddim_discretize: str = "uniform",
        latent_guidance: LatentGuidance | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        if eta != 0:
            raise ValueError("PLMS sampling is deterministic: eta must be 0")
        if quantize_x0:
            raise NotImplementedError("quantize_x0 needs a VQ first stage, which this project does not include")
        self.check_batch(conditioning, batch_size)
        self.make_schedule(ddim_num_steps=S, ddim_discretize=ddim_discretize, ddim_eta=0.0, verbose=verbose)
        x = self.initial_noise((batch_size, *shape), x_T, generator)
        timesteps = [int(t) for t in reversed(self.ddim_timesteps)]
        old_eps: list[torch.Tensor] = []

        def eps(x: torch.Tensor, ts: torch.Tensor, cond: Any) -> torch.Tensor:
            return self.eps(
                x, ts, cond, unconditional_conditioning, unconditional_guidance_scale, score_corrector, corrector_kwargs
            )

        def step(x: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t = eps(x, ts, cond)
            if not old_eps:
                # Pseudo improved Euler: average eps at x_t and at the predicted x_{t-1}.
                x_prev, _ = self.step_from_eps(x, e_t, index, temperature, noise_dropout, generator)
                t_next = torch.full_like(ts, timesteps[min(i + 1, len(timesteps) - 1)])
                e_t_prime = (e_t + eps(x_prev, t_next, cond)) / 2
            else:
                e_t_prime = plms_eps(e_t, old_eps)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
            return self.step_from_eps(x, e_t_prime, index, temperature, noise_dropout, generator)

        return self.run_loop(
            x,
            conditioning,
            timesteps,
            step,
            latent_guidance=latent_guidance,
            mask=mask,
            x0=x0,
            callback=callback,
            img_callback=img_callback,
            log_every_t=log_every_t,
            verbose=verbose,
        )
