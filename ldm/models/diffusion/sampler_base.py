"""The loop all samplers share: latent guidance -> denoise (with CFG) -> step (``docs/architecture.md``, Seams).

A sampler only uses `model.apply_model` (the denoiser), `model.eps_from_model_output` (its output -> eps, for the
eps/x0/v parameterizations), `model.alphas_cumprod`, and, for the DDPM
sampler, the model's posterior buffers. It never reaches into the UNet. Subclasses choose the timesteps
(`timesteps_for`), the update of one step (`make_step`) and, for samplers on another noise scale, the start latent
(`start_latent`); `sample` keeps the original call.

The loop's latent is always the DDPM-space z_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps: the latent guidance hook,
the mask, the intermediates and the callbacks see z_t whatever the sampler; a sampler that works on another scale
(the sigma-space ones, x = z / sqrt(abar)) converts inside its step. Timesteps may be fractional (diffusers' Euler
"linspace" spacing): the model then gets float timesteps [B] (the UNet's sinusoidal embedding takes any real t).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ldm.guidance.base import LatentGuidance, prepare_start_noise
from ldm.models.diffusion.guidance.cfg import guided_eps

logger = logging.getLogger(__name__)

# (x_t, cond, t [B], index into the schedule, position in the run) -> (x_{t-1}, predicted x_0)
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


def select_cond(conditioning: Any, rows: slice | torch.Tensor | list[int]) -> Any:
    """The rows ``rows`` of every tensor in a conditioning: a tensor ``[B, ...]``, a list of them, or a dict of
    tensors / lists of tensors (SDXL's ``{"c_crossattn": [..], "c_adm": [..]}``)."""
    if conditioning is None:
        return None
    if isinstance(conditioning, dict):
        return {k: select_cond(v, rows) for k, v in conditioning.items()}
    if isinstance(conditioning, (list, tuple)):
        return [select_cond(v, rows) for v in conditioning]
    return conditioning[rows]


# One generator for the batch, or one per sample (the distributed engine: an image's noise depends on its own seed
# only, whatever batch it is in).
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class StepOptions:
    """What one step needs besides the latent: CFG, the original's score corrector and noise options."""

    unconditional_conditioning: Any = None
    unconditional_guidance_scale: float = 1.0
    score_corrector: Any = None
    corrector_kwargs: dict | None = None
    temperature: float = 1.0
    noise_dropout: float = 0.0
    generator: Generators = None


def noise_like(
    shape: tuple[int, ...], device: torch.device, generator: Generators = None, repeat: bool = False
) -> torch.Tensor:
    """Standard normal noise of ``shape`` (float32) on ``device``.

    ``generator`` may be a list with one generator per sample (``shape[0]`` of them): sample ``b`` is drawn from
    ``generator[b]`` on that generator's device, then moved to ``device``; so a sample's noise does not depend on the
    other samples of its batch.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} per-sample generators for a batch of {shape[0]}")
        draws = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.cat(draws).to(device)
    if repeat:
        noise = torch.randn((1, *shape[1:]), device=device, generator=generator)
        return noise.repeat(shape[0], *((1,) * (len(shape) - 1)))
    return torch.randn(shape, device=device, generator=generator)


class DiffusionSampler:
    """Common state, the original `sample(...)` call and the loop."""

    name = "sampler"

    def __init__(self, model: Any, schedule: str = "linear", **kwargs: Any) -> None:
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule

    @property
    def device(self) -> torch.device:
        return self.model.alphas_cumprod.device

    # --- what subclasses define ------------------------------------------------------------------------------
    def timesteps_for(self, S: int | None, ddim_discretize: str, eta: float) -> list[int] | list[float]:
        """The timesteps to visit, in descending order (and any per-run schedule state); floats where fractional."""
        raise NotImplementedError

    def make_step(self, timesteps: list[int], options: StepOptions) -> StepFn:
        raise NotImplementedError

    def start_latent(self, x_T: torch.Tensor) -> torch.Tensor:
        """The loop's first latent z from the start noise x_T ~ N(0, I) (identity: DDPM-space samplers)."""
        return x_T

    def timestep_tensor(self, step: float, batch: int, integral: bool) -> torch.Tensor:
        """t [B] for the model: long, or float32 in a run with fractional timesteps."""
        if integral:
            return torch.full((batch,), int(step), device=self.device, dtype=torch.long)
        return torch.full((batch,), float(step), device=self.device, dtype=torch.float32)

    def noised(self, x0: torch.Tensor, ts: torch.Tensor, i: int) -> torch.Tensor:
        """x0 noised to the level of step ``i`` (the mask's known region): DDPM eq. 4 at ``ts``."""
        return self.model.q_sample(x0, ts)

    # --- shared ----------------------------------------------------------------------------------------------
    def eps(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Any,
        options: StepOptions,
        alphas_cumprod: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """eps_theta with classifier-free guidance (and the original's optional score corrector).

        CFG combines the raw model outputs (eps, x0 or v, as the reference does for v); the combination is then
        turned into eps once, here, by ``model.eps_from_model_output``: every sampler works on eps alone.
        ``alphas_cumprod`` [B]: abar of the latent's noise level where it is not the schedule's at ``t`` (fractional
        timesteps, Karras sigmas); None: the schedule's.
        """
        out = guided_eps(
            self.model.apply_model, x, t, cond, options.unconditional_conditioning, options.unconditional_guidance_scale
        )
        if alphas_cumprod is None:
            e_t = self.model.eps_from_model_output(x, t, out)
        else:
            e_t = self.model.eps_from_model_output(x, t, out, alphas_cumprod=alphas_cumprod)
        if options.score_corrector is not None:
            e_t = options.score_corrector.modify_score(self.model, e_t, x, t, cond, **(options.corrector_kwargs or {}))
        return e_t

    def noise(self, x: torch.Tensor, scale: torch.Tensor | float, options: StepOptions) -> torch.Tensor:
        """scale * z * temperature, z ~ N(0, I) from the run's generator, with optional noise dropout."""
        noise = scale * noise_like(x.shape, x.device, options.generator) * options.temperature
        if options.noise_dropout > 0.0:
            noise = torch.nn.functional.dropout(noise, p=options.noise_dropout)
        return noise

    @torch.no_grad()
    def sample(
        self,
        S: int | None,
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
        generator: Generators = None,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Sample from x_T (drawn from `generator` when not given); returns (samples, intermediates).

        `generator` is one generator for the batch or a list of one per sample (see `noise_like`); it also draws
        the step noise of DDPM and of DDIM with eta > 0.

        `intermediates` holds `x_inter` and `pred_x0` every `log_every_t` steps; both start with x_T, as in the
        original. `latent_guidance` (e.g. Attend-and-Excite) edits the latent at the start of every step; its optional
        `prepare_start` hook may replace x_T first (`ldm.guidance.base.prepare_start_noise`).
        """
        if quantize_x0:
            raise NotImplementedError("quantize_x0 needs a VQ first stage, which this project does not include")
        cond_bs = batch_size_of(conditioning)
        if cond_bs is not None and cond_bs != batch_size:
            logger.warning("Got %d conditionings but batch-size is %d", cond_bs, batch_size)
        timesteps = self.timesteps_for(S, ddim_discretize, eta)
        options = StepOptions(
            unconditional_conditioning,
            unconditional_guidance_scale,
            score_corrector,
            corrector_kwargs,
            temperature,
            noise_dropout,
            generator,
        )
        x = x_T.to(self.device) if x_T is not None else noise_like((batch_size, *shape), self.device, generator)
        total = len(timesteps)
        integral = all(float(step).is_integer() for step in timesteps)
        if latent_guidance is not None and total:  # a method may replace the start noise (INITNO optimises it)
            first = self.timestep_tensor(timesteps[0], x.shape[0], integral)
            x = prepare_start_noise(latent_guidance, x, first, total, conditioning, generator)
        x = self.start_latent(x)  # the noise x_T -> the loop's first latent z
        step_fn = self.make_step(timesteps, options)
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x], "pred_x0": [x]}
        for i, step in enumerate(tqdm(timesteps, desc=f"{self.name} sampler", total=total, disable=not verbose)):
            index = total - i - 1
            ts = self.timestep_tensor(step, x.shape[0], integral)
            if mask is not None:
                x = self.noised(x0, ts, i) * mask + (1.0 - mask) * x
            if latent_guidance is not None:
                x = latent_guidance(x, ts, i, total, conditioning)
            x, pred_x0 = step_fn(x, conditioning, ts, index, i)
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(pred_x0)
        return x, intermediates
