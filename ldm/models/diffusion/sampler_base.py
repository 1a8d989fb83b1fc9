"""The loop all samplers share: latent guidance -> denoise (with CFG) -> step (design seam 1).

A sampler only uses `model.apply_model` (the denoiser eps(x, t, c)), `model.alphas_cumprod`, and, for the DDPM
sampler, the model's posterior buffers. It never reaches into the UNet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from ldm.models.diffusion.guidance.base import LatentGuidance
from ldm.models.diffusion.guidance.cfg import guided_eps

logger = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor, Any, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


def batch_size_of(conditioning: Any) -> int | None:
    if conditioning is None:
        return None
    if isinstance(conditioning, dict):
        first = next(iter(conditioning.values()))
        first = first[0] if isinstance(first, list) else first
        return first.shape[0]
    if isinstance(conditioning, list):
        return conditioning[0].shape[0]
    return conditioning.shape[0]


class DiffusionSampler:
    """Common state and loop; subclasses build the per-step update in `make_step`."""

    name = "sampler"

    def __init__(self, model: Any, schedule: str = "linear", **kwargs: Any) -> None:
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule

    @property
    def device(self) -> torch.device:
        return self.model.alphas_cumprod.device

    def eps(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Any,
        uncond: Any,
        scale: float,
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """eps_theta with classifier-free guidance (and the original's optional score corrector)."""
        e_t = guided_eps(self.model.apply_model, x, t, cond, uncond, scale)
        if score_corrector is not None:
            e_t = score_corrector.modify_score(self.model, e_t, x, t, cond, **(corrector_kwargs or {}))
        return e_t

    def initial_noise(
        self, shape: tuple[int, ...], x_T: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        if x_T is not None:
            return x_T.to(self.device)
        return torch.randn(shape, generator=generator, device=self.device)

    @staticmethod
    def check_batch(conditioning: Any, batch_size: int) -> None:
        cond_bs = batch_size_of(conditioning)
        if cond_bs is not None and cond_bs != batch_size:
            logger.warning("Got %d conditionings but batch-size is %d", cond_bs, batch_size)

    def run_loop(
        self,
        x: torch.Tensor,
        cond: Any,
        timesteps: list[int],
        step_fn: StepFn,
        *,
        latent_guidance: LatentGuidance | None = None,
        mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        callback: Callable | None = None,
        img_callback: Callable | None = None,
        log_every_t: int = 100,
        verbose: bool = True,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Visit `timesteps` (descending); return the final latent and `{x_inter, pred_x0}` (both start with x_T)."""
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x], "pred_x0": [x]}
        total = len(timesteps)
        b = x.shape[0]
        iterator = tqdm(timesteps, desc=f"{self.name} sampler", total=total, disable=not verbose)
        for i, step in enumerate(iterator):
            index = total - i - 1
            ts = torch.full((b,), int(step), device=self.device, dtype=torch.long)
            if mask is not None:
                x_orig = self.model.q_sample(x0, ts)
                x = x_orig * mask + (1.0 - mask) * x
            if latent_guidance is not None:
                x = latent_guidance(x, ts, i, total, cond)
            x, pred_x0 = step_fn(x, cond, ts, index, i)
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(pred_x0)
        return x, intermediates


def noise_like(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None, repeat: bool = False
) -> torch.Tensor:
    if repeat:
        return torch.randn((1, *shape[1:]), device=device, generator=generator).repeat(
            shape[0], *((1,) * (len(shape) - 1))
        )
    return torch.randn(shape, device=device, generator=generator)
