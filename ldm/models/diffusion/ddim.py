"""DDIM sampler (Song et al. 2021), with the original `sample(S, batch_size, shape, conditioning, ...)` call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldm.models.diffusion.guidance.base import LatentGuidance
from ldm.models.diffusion.sampler_base import DiffusionSampler, noise_like
from ldm.models.diffusion.schedule import ddim_alphas, ddim_sigmas, make_ddim_timesteps


class DDIMSampler(DiffusionSampler):
    name = "DDIM"

    def make_schedule(
        self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0, verbose: bool = True
    ) -> None:
        """DDIM timesteps tau and the per-step abar_tau, abar_tau_prev, sigma (eq. 16)."""
        self.ddim_timesteps = make_ddim_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps)
        alphas_cumprod = self.model.alphas_cumprod
        self.ddim_alphas, self.ddim_alphas_prev = ddim_alphas(alphas_cumprod, self.ddim_timesteps)
        self.ddim_sigmas = ddim_sigmas(self.ddim_alphas, self.ddim_alphas_prev, ddim_eta)
        self.ddim_sqrt_one_minus_alphas = torch.sqrt(1.0 - self.ddim_alphas)

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
        """Run S DDIM steps from x_T (drawn from `generator` when not given); returns (samples, intermediates)."""
        if quantize_x0:
            raise NotImplementedError("quantize_x0 needs a VQ first stage, which this project does not include")
        self.check_batch(conditioning, batch_size)
        self.make_schedule(ddim_num_steps=S, ddim_discretize=ddim_discretize, ddim_eta=eta, verbose=verbose)
        x = self.initial_noise((batch_size, *shape), x_T, generator)

        def step(x: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t = self.eps(
                x, ts, cond, unconditional_conditioning, unconditional_guidance_scale, score_corrector, corrector_kwargs
            )
            return self.step_from_eps(x, e_t, index, temperature, noise_dropout, generator)

        timesteps = [int(t) for t in reversed(self.ddim_timesteps)]
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

    def step_from_eps(
        self,
        x: torch.Tensor,
        e_t: torch.Tensor,
        index: int,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM eq. 12: x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z."""
        a_t = self.ddim_alphas[index]
        a_prev = self.ddim_alphas_prev[index]
        sigma_t = self.ddim_sigmas[index]
        sqrt_one_minus_at = self.ddim_sqrt_one_minus_alphas[index]
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        if float(sigma_t) > 0:
            noise = sigma_t * noise_like(x.shape, x.device, generator) * temperature
            if noise_dropout > 0.0:
                noise = torch.nn.functional.dropout(noise, p=noise_dropout)
            x_prev = x_prev + noise
        return x_prev, pred_x0
