"""The one registry of sampler names: what ``--sampler NAME`` (scripts, engine, evaluation, explorer) selects.

Each entry names the class and its options, the steps users typically pick, and the equivalents in diffusers and
AUTOMATIC1111 (the table of docs/samplers.md is this registry). :func:`make_sampler` builds one for a model and
:func:`steps_run` says how many steps it really runs (the A&E schedule is scaled to that number).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from ldm.errors import UserError
from ldm.models.diffusion.schedule import make_ddim_timesteps

__all__ = ["SamplerSpec", "SAMPLERS", "SAMPLER_NAMES", "make_sampler", "steps_run", "sampler_spec"]


@dataclass(frozen=True)
class SamplerSpec:
    """A selectable sampler."""

    name: str  # the --sampler value
    title: str
    target: str  # "module:Class"
    options: dict[str, Any] = field(default_factory=dict)  # constructor keywords
    steps: str = ""  # the steps users typically pick
    diffusers: str = ""  # the equivalent diffusers scheduler (SD 1.x/2.x scheduler config)
    a1111: str = ""  # the AUTOMATIC1111 web UI's name
    eta: str = "refused"  # --ddim_eta: "used" (DDIM), "ignored" (DDPM, as before), "refused" (the others)


_DIFFUSION = "ldm.models.diffusion"
SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec("ddim", "DDIM", f"{_DIFFUSION}.ddim:DDIMSampler", steps="50 (25-100)",
                    diffusers="DDIMScheduler", a1111="DDIM", eta="used"),
        SamplerSpec("plms", "PLMS", f"{_DIFFUSION}.plms:PLMSSampler", steps="50",
                    diffusers="PNDMScheduler (skip_prk_steps)", a1111="PLMS"),
        SamplerSpec("ddpm", "DDPM (ancestral)", f"{_DIFFUSION}.ddpm_sampler:DDPMSampler", steps="1000",
                    diffusers="DDPMScheduler", a1111="-", eta="ignored"),
        SamplerSpec("euler", "Euler", f"{_DIFFUSION}.euler:EulerSampler", steps="20-40",
                    diffusers="EulerDiscreteScheduler", a1111="Euler"),
        SamplerSpec("euler_a", "Euler ancestral", f"{_DIFFUSION}.euler:EulerAncestralSampler", steps="20-40",
                    diffusers="EulerAncestralDiscreteScheduler", a1111="Euler a"),
        SamplerSpec("dpmpp_2m", "DPM++ 2M", f"{_DIFFUSION}.dpm_solver:DPMSolverPP2MSampler", steps="15-30",
                    diffusers="DPMSolverMultistepScheduler", a1111="DPM++ 2M"),
        SamplerSpec("dpmpp_2m_karras", "DPM++ 2M Karras", f"{_DIFFUSION}.dpm_solver:DPMSolverPP2MSampler",
                    {"karras": True}, steps="15-30", diffusers="DPMSolverMultistepScheduler(use_karras_sigmas=True)",
                    a1111="DPM++ 2M Karras"),
        SamplerSpec("unipc", "UniPC (bh2)", f"{_DIFFUSION}.unipc:UniPCSampler", steps="10-25",
                    diffusers="UniPCMultistepScheduler", a1111="UniPC"),
    )
}  # fmt: skip
SAMPLER_NAMES = tuple(SAMPLERS)


def sampler_spec(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]


def make_sampler(model: Any, name: str) -> Any:
    """The sampler ``name`` (a :data:`SAMPLERS` key) for ``model``."""
    spec = sampler_spec(name)
    module, cls = spec.target.split(":")
    return getattr(import_module(module), cls)(model, **spec.options)


def steps_run(name: str, steps: int, num_timesteps: int) -> int:
    """How many steps sampler ``name`` really runs for ``steps`` (DDIM/PLMS 'uniform' runs more when ``steps`` does
    not divide T; DDPM runs 1..T training steps; the others exactly ``steps``)."""
    sampler_spec(name)
    if not 1 <= steps <= num_timesteps:
        raise UserError(f"sampler {name} runs 1..{num_timesteps} steps (the model's timesteps), got {steps}")
    if name in ("ddim", "plms"):
        return len(make_ddim_timesteps("uniform", steps, num_timesteps))
    return steps
