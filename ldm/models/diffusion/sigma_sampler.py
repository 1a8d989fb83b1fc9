"""The base of the samplers that step between noise levels sigma of the model's schedule (Euler, DPM-Solver, UniPC).

They keep the shared loop (``sampler_base``): its latent is the DDPM-space z_t, so the latent guidance hook (e.g.
Attend-and-Excite), the mask and the callbacks see z_t as with DDIM. A step converts where its method needs the
variance-exploding latent x = z / sqrt(abar) = z * sqrt(1 + sigma^2) (Euler) and works on z directly where the method
is written for it (DPM-Solver, UniPC). The guided update is therefore the same for every sampler: the hook moves z_t
before the step's denoising pass, as it does for DDIM.

The model gets the run's timesteps (fractional with Euler's "linspace" spacing; rounded ones with Karras sigmas),
and its output is turned into eps at the noise level of the latent (``alphas_cumprod`` = 1 / (1 + sigma^2)), as
diffusers' schedulers convert at their sigmas.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ldm.models.description import describe_model
from ldm.models.diffusion.sampler_base import DiffusionSampler, StepOptions
from ldm.models.diffusion.sigma_schedule import SigmaRun, sigma_run


class SigmaSampler(DiffusionSampler):
    """A sampler on the noise levels of :func:`ldm.models.diffusion.sigma_schedule.sigma_run`.

    Args:
        spacing: timestep spacing ("linspace", diffusers' default for these samplers and SD 1.x/2.x configs;
            "leading"; "trailing"; "sgm", SDXL's reference discretization). None: the model's
            (``ModelDescription.sigma_spacing``: "sgm" for SDXL, "linspace" for the others).
        karras: the run's noise levels are Karras et al.'s (rho 7) instead of the spaced timesteps' own.
    """

    rounded_timesteps = False  # DPM-Solver/UniPC: integer timesteps; Euler: fractional
    start_in_sigma_space = False  # Euler: the start latent is x = sigma_max * noise (diffusers, k-diffusion)

    def __init__(
        self, model: Any, schedule: str = "linear", spacing: str | None = None, karras: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(model, schedule, **kwargs)
        self.spacing = spacing or describe_model(model).sigma_spacing
        self.karras = karras
        self.run: SigmaRun | None = None

    def timesteps_for(self, S: int | None, ddim_discretize: str, eta: float) -> list[float]:
        if S is None:
            raise ValueError(f"{self.name} sampling needs the number of steps S")
        if eta != 0:
            raise ValueError(f"{self.name} sampling takes no eta (eta is DDIM's); got {eta}")
        self.run = sigma_run(self.model.alphas_cumprod, int(S), self.spacing, self.rounded_timesteps, self.karras)
        if self.rounded_timesteps and not self.karras and len(set(self.run.timesteps)) < len(self.run):
            raise ValueError(f"{self.name} with {S} steps repeats timesteps; use fewer steps")
        return list(self.run.timesteps)

    def start_latent(self, x_T: torch.Tensor) -> torch.Tensor:
        """z from x_T ~ N(0, I). Euler family: x = s * x_T with s = sigma_max ("linspace"/"trailing"; "leading":
        sqrt(sigma_max^2 + 1), as diffusers' ``init_noise_sigma``; "sgm": sqrt(sigma_max^2 + 1), as sgm's
        ``prepare_sampling_loop``), i.e. z = s x_T / sqrt(1 + sigma_max^2)."""
        if not self.start_in_sigma_space:
            return x_T
        sigma = self.run.sigmas[0]
        scale = sigma if self.spacing in ("linspace", "trailing") else math.sqrt(sigma**2 + 1.0)
        return x_T * (scale / math.sqrt(sigma**2 + 1.0))

    def noised(self, x0: torch.Tensor, ts: torch.Tensor, i: int) -> torch.Tensor:
        alpha, sigma_vp = self.run.vp(i)
        return alpha * x0 + sigma_vp * torch.randn_like(x0)

    def abar(self, i: int, batch: int) -> torch.Tensor:
        """abar of noise level ``i`` for a batch: [B] float32."""
        return torch.full((batch,), self.run.alphas_cumprod(i), device=self.device, dtype=torch.float32)

    def denoise(
        self, z: torch.Tensor, cond: Any, ts: torch.Tensor, i: int, options: StepOptions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) of the latent z at noise level ``i`` (CFG and the parameterization handled by ``eps``)."""
        e_t = self.eps(z, ts, cond, options, alphas_cumprod=self.abar(i, z.shape[0]))
        alpha, sigma_vp = self.run.vp(i)
        return e_t, (z - sigma_vp * e_t) / alpha  # x0 = (z - sigma_vp eps) / alpha
