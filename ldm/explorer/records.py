"""What the explorer's runs hand to the page: the sampling settings of a run, one run's trace (image, per-step maps
and losses, cost) and a run without and with a method (importable from :mod:`ldm.explorer.session` as before)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ldm.guidance.flags import settings_text

__all__ = ["Settings", "RunTrace", "RunResult", "field_text"]


@dataclass
class Settings:
    """The sampling settings of a run (the txt2img flags of the same names)."""

    steps: int = 25
    scale: float = 3.0
    seed: int = 42
    sampler: str = "ddim"
    H: int = 64
    W: int = 64
    eta: float = 0.0


@dataclass
class RunTrace:
    """One run (without or with A&E): the image and, per step, the selected words' maps and scores."""

    image: Image.Image
    maps: list[torch.Tensor]  # per step: [K, r, r], the smoothed maps at the latent entering the step
    final_maps: torch.Tensor  # [K, r, r] on the final latent at t=1 (what --save_attention draws)
    timesteps: list[int | float]  # per step: the sampler's timestep t (fractional for Euler)
    guided: list[bool]  # per step: the maps came from a guidance pass
    refinement: list[int]  # per step: refinement iterations spent
    method_loss: list[float | None] = field(default_factory=list)  # per step: the method's own loss (guided steps)
    seconds: float = 0.0  # sampling and the final maps
    unet_evaluations: int = 0  # samples through the UNet (a CFG step 2, a guidance or maps pass 1)

    @property
    def max_attention(self) -> list[list[float]]:
        """Per step, per word: m_k, the spatial max of the word's smoothed map (the A&E score)."""
        return [m.flatten(1).max(dim=1).values.tolist() for m in self.maps]

    @property
    def loss(self) -> list[float]:
        """Per step: the A&E loss max_k max(0, 1 - m_k) of the latent entering the step (eq. 3)."""
        return [max(0.0, 1.0 - min(scores)) for scores in self.max_attention]


@dataclass
class RunResult:
    """A run without and with A&E from the same seed."""

    prompt: str
    spec: str  # the --ae_tokens string
    labels: list[str]  # one per excited word
    plain: RunTrace
    excited: RunTrace
    config: Any  # the method's settings with its schedule scaled to the steps run
    command: str  # the txt2img command that reproduces the run with guidance
    report: dict = field(default_factory=dict)  # the scripts' token report of the prompt
    method: str = "ae"  # the registered guidance method of the guided run

    @property
    def steps(self) -> int:
        return len(self.excited.maps)

    @property
    def refinement_total(self) -> int:
        return sum(self.excited.refinement)


def field_text(value: Any) -> str:
    """A settings value in its ``--ae_<field>`` / ``--g_<field>`` flag syntax."""
    return settings_text(value)
