"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) over all T training steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldm.models.diffusion.guidance.base import LatentGuidance
from ldm.models.diffusion.sampler_base import DiffusionSampler, noise_like


class DDPMSampler(DiffusionSampler):
    name = "DDPM"

    @torch.no_grad()
    def sample(
        self,
        S: int | None,
        batch_size: int,
        shape: tuple[int, int, int],
        conditioning: Any = None,
        callback: Callable | None = None,
        img_callback: Callable | None = None,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        verbose: bool = True,
        x_T: torch.Tensor | None = None,
        log_every_t: int | None = None,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Any = None,
        clip_denoised: bool | None = None,
        latent_guidance: LatentGuidance | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Ancestral sampling from t = S-1 (default T-1) down to 0; returns (samples, intermediates)."""
        num_steps = S or self.ddpm_num_timesteps
        if num_steps > self.ddpm_num_timesteps:
            raise ValueError(f"DDPM sampling runs at most {self.ddpm_num_timesteps} steps, got {num_steps}")
        self.check_batch(conditioning, batch_size)
        clip = self.model.clip_denoised if clip_denoised is None else clip_denoised
        model = self.model
        x = self.initial_noise((batch_size, *shape), x_T, generator)

        def step(x: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t = self.eps(x, ts, cond, unconditional_conditioning, unconditional_guidance_scale)
            pred_x0 = model.predict_start_from_noise(x, ts, e_t) if model.parameterization == "eps" else e_t
            if clip:
                pred_x0 = pred_x0.clamp(-1.0, 1.0)
            mean, _, log_var = model.q_posterior(pred_x0, x, ts)
            noise = noise_like(x.shape, x.device, generator) * temperature
            if noise_dropout > 0.0:
                noise = torch.nn.functional.dropout(noise, p=noise_dropout)
            nonzero = (ts != 0).float().reshape(x.shape[0], *((1,) * (x.dim() - 1)))  # no noise at t == 0
            return mean + nonzero * (0.5 * log_var).exp() * noise, pred_x0

        timesteps = list(reversed(range(num_steps)))
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
            log_every_t=log_every_t or model.log_every_t,
            verbose=verbose,
        )
