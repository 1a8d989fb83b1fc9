"""What a guidance method is: the sampler hook it implements and the description the registry holds.

A guidance method steers sampling by editing the latent at the start of each step (Attend-and-Excite and its
successors do it with a loss on the cross-attention maps). Everything the scripts, the engine, the evaluation and the
explorer need to know about one is its :class:`GuidanceMethod`: a name, a config dataclass (whose fields become the
``--g_<field>`` flags), and ``build``, which turns a :class:`GuidanceRequest` (the model, the settings, the batch's
prompts and tokens) into the :class:`LatentGuidance` object the sampler calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ldm.guidance.tokens import PromptTokens, TokenGroup

__all__ = ["LatentGuidance", "GuidanceMethod", "GuidanceRequest", "NoSettings", "prepare_start_noise"]


class LatentGuidance(Protocol):
    """Called by every sampler at the start of each step, before the denoising pass.

    Args:
        x: the current latent z_t, [B, C, h, w] (the DDPM-space latent sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps;
            samplers that work in sigma space convert to and from it).
        t: the timestep of this step for each sample, [B].
        step: 0-based position in the run (0 is the first, noisiest step).
        num_steps: how many steps the run has.
        cond: the conditional conditioning of the batch as the sampler has it: a context tensor [B, 77, D], a list
            of them, or a dict of lists (e.g. a context and a vector ``y``).
    Returns the latent to denoise (the same tensor when the method does nothing at this step). Implementations
    enable gradients themselves where they need them; samplers call them under ``torch.no_grad()``.
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any) -> torch.Tensor: ...


def prepare_start_noise(
    guidance: Any, x: torch.Tensor, t: torch.Tensor, num_steps: int, cond: Any, generator: Any
) -> torch.Tensor:
    """The start latent a sampler begins from, after the guidance object's optional ``prepare_start`` hook.

    A guidance object may define ``prepare_start(x, t, num_steps, cond, generator) -> x`` to replace the start noise
    before the first step (INITNO optimises it). ``x`` is x_T ``[B, C, h, w]`` (drawn or given), ``t`` ``[B]`` the
    first step's timestep, ``cond`` as in ``__call__``, ``generator`` the sampler's (one, one per sample, or None:
    the global RNG), from which the hook may draw fresh noise; the step noise of stochastic samplers comes after its
    draws. Samplers call this once, after x_T is drawn and before the first step; objects without the hook keep x.
    """
    prepare = getattr(guidance, "prepare_start", None)
    return x if prepare is None else prepare(x, t, num_steps, cond, generator)


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method that has none (plain sampling)."""


@dataclass
class GuidanceRequest:
    """What a method's ``build`` gets for one batch.

    ``config`` has its schedule in absolute step indices of the run (see :meth:`GuidanceMethod.for_steps`).
    ``tokens[b]`` is sample b's prompt after the placeholder splice (ids, token strings, end position);
    ``token_groups[b]`` the position groups its ``--ae_tokens`` spec names (empty: none given).
    """

    model: Any  # the LatentDiffusion (or, in unit tests, a bare UNet; see ldm.guidance.denoiser)
    config: Any
    prompts: list[str]
    tokens: list[PromptTokens]
    token_groups: list[tuple[TokenGroup, ...]]
    on_maps: Callable[[Any], None] | None = None  # viewers: each step's maps (see ldm.guidance.engine.StepMaps)


@dataclass(frozen=True)
class GuidanceMethod:
    """A registered guidance method (``ldm/guidance/registry.py`` holds one per line).

    Attributes:
        name: the registry key (``--guidance NAME``, the engine's method folders).
        title, paper: for help texts, the explorer and the docs.
        config_class: a frozen dataclass with one field per knob (official defaults); its fields become ``--g_<field>``
            flags and are what a YAML ``guidance: {target: <config class>, params: {...}}`` block fills.
        build: ``GuidanceRequest -> LatentGuidance | None`` (None: nothing to do for this batch).
        needs_tokens: the method excites the ``--ae_tokens`` words, so a run without them is an error.
        presets: family -> YAML file of the method's settings for that model family (``"default"`` for any other;
            family names as ``ldm.models.description`` gives them). Missing: the dataclass defaults.
        for_steps: ``(config, num_steps) -> config`` with the schedule in absolute step indices of a run of
            ``num_steps`` steps (identity for methods without a step schedule).

    A config field ``attention_res`` is checked against the model's map sides before the model is loaded
    (``ldm/validation.py``).
    """

    name: str
    title: str
    paper: str
    config_class: type
    build: Callable[[GuidanceRequest], LatentGuidance | None]
    needs_tokens: bool = False
    presets: dict[str, Path] = field(default_factory=dict)
    for_steps: Callable[[Any, int], Any] = staticmethod(lambda config, num_steps: config)

    def field_names(self) -> list[str]:
        """The settings of the method (the ``--g_<field>`` flags), in declaration order."""
        return [f.name for f in dataclasses.fields(self.config_class) if f.name not in HIDDEN_FIELDS]

    def preset_for(self, family: str | None) -> Path | None:
        """The method's YAML preset for a model family, else its default preset, else None."""
        return self.presets.get(family or "default") or self.presets.get("default")


# Fields of a config that are per-prompt data, not settings: never flags.
HIDDEN_FIELDS: Sequence[str] = ("token_indices",)
