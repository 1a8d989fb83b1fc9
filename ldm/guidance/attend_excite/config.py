"""The settings of Attend-and-Excite and the schedule arithmetic on them (``method.py`` has the method).

:class:`AttendExciteConfig` holds every knob with the official defaults and validates them; :func:`scale_schedule`
turns a schedule written for one step count into the steps of a run (through its fractions of the run,
:func:`schedule_fractions`) and :func:`step_size` is the update size alpha_i (eq. 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction

import numpy as np

from ldm.guidance.schedule import linspace_step_size, rescale_step, rescale_thresholds, step_at  # noqa: F401
from ldm.guidance.tokens import TokenGroup

LOSS_REDUCTIONS = ("per_sample", "shared")
SOFTMAX_ENDS = ("last", "eot")


@dataclass(frozen=True)
class AttendExciteConfig:
    """Every knob of Attend-and-Excite; defaults are the official ones (AE ``RunConfig``, 50-step schedule).

    Attributes:
        token_indices: positions to excite in the padded 77-token sequence (0 is the start token). An entry may be a
            tuple of positions (a word split into sub-tokens, a multi-vector placeholder): its score is the max over
            them. Empty: no guidance.
        attention_res: side of the cross-attention maps used (16: 16x16 maps).
        max_iter_to_alter: the regular update runs at steps ``i < max_iter_to_alter`` (absolute step indices).
        thresholds: ``{step: threshold}``; at these steps refine until every token's max attention reaches it.
        scale_factor, scale_range: step size ``scale_factor * sqrt(linspace(*scale_range, num_steps)[i])``.
        smooth_attentions, sigma, kernel_size: Gaussian smoothing; ``sigma`` is the reference's nominal sigma
            (its kernel has std ``sigma * sqrt(2)``, see ``smoothing.py``).
        softmax_scale: the maps are multiplied by this before the softmax over text positions (the reference's 100).
        softmax_end: ``"last"`` keeps positions ``[1:-1]`` (reference); ``"eot"`` cuts at the end-of-text token
            (the reference's ``sd_2_1`` normalisation).
        max_refinement_steps: at most this many refinement iterations per threshold step.
        loss_reduction: ``"per_sample"`` (diffusers) or ``"shared"``: one loss on the maps averaged over the batch,
            as the earlier LDM fork did.
        schedule_steps: the step count B ``thresholds`` and ``max_iter_to_alter`` were written for: step i is the
            fraction i / B of the run, whatever the sampler and its step count (:func:`scale_schedule` gives the
            steps of a run). ``None``: already absolute.
        checkpoint_guidance: recompute the UNet blocks of the guidance pass in its backward (gradient checkpointing,
            whatever the config's ``use_checkpoint``): less activation memory for one more forward of the blocks per
            backward (docs/benchmarks.md "Checkpointing"). Off: sampling never recomputes.
    """

    token_indices: tuple[int | TokenGroup, ...] = ()
    attention_res: int = 16
    max_iter_to_alter: int = 25
    thresholds: Mapping[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    smooth_attentions: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    softmax_scale: float = 100.0
    softmax_end: str = "last"
    max_refinement_steps: int = 20
    loss_reduction: str = "per_sample"
    schedule_steps: int | None = 50
    checkpoint_guidance: bool = False

    def __post_init__(self) -> None:
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.softmax_end not in SOFTMAX_ENDS:
            raise ValueError(f"softmax_end must be one of {SOFTMAX_ENDS}, got {self.softmax_end!r}")
        if self.attention_res < 1 or self.max_refinement_steps < 0 or self.kernel_size < 1:
            raise ValueError("attention_res and kernel_size must be >= 1 and max_refinement_steps >= 0")
        object.__setattr__(self, "thresholds", {int(k): float(v) for k, v in dict(self.thresholds).items()})
        object.__setattr__(self, "token_indices", normalize_token_indices(self.token_indices))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))


def display_config(config: object) -> AttendExciteConfig:
    """The A&E map settings (side, softmax, smoothing) that show any method's token maps: its own where it has
    fields of the same names, else A&E's defaults."""
    if isinstance(config, AttendExciteConfig):
        return config
    names = [f.name for f in fields(AttendExciteConfig) if f.name != "token_indices"]
    return AttendExciteConfig(**{name: getattr(config, name) for name in names if hasattr(config, name)})


def normalize_token_indices(indices: Sequence[int | Sequence[int]]) -> tuple[TokenGroup, ...]:
    """``[2, (4, 5)]`` -> ``((2,), (4, 5))``."""
    return tuple((int(i),) if isinstance(i, (int, np.integer)) else tuple(int(j) for j in i) for i in indices)


def schedule_fractions(config: AttendExciteConfig) -> tuple[Fraction, dict[Fraction, float]]:
    """The schedule as fractions of the run: (updates at steps before this fraction, {fraction: threshold}).

    An integer schedule written for ``schedule_steps`` = B means step i = the fraction i / B of the run (the official
    ``{0: .05, 10: .5, 20: .8}``, ``max_iter_to_alter`` 25 of 50: thresholds at 0, 0.2 and 0.4 of the run, updates in
    its first half), whatever sampler runs it. A config with ``schedule_steps`` None is already absolute: an error.
    """
    base = config.schedule_steps
    if base is None:
        raise ValueError("the schedule is absolute (schedule_steps None): it has no fractions")
    return Fraction(config.max_iter_to_alter, base), {Fraction(i, base): thr for i, thr in config.thresholds.items()}


def scale_schedule(config: AttendExciteConfig, num_steps: int) -> AttendExciteConfig:
    """The schedule (:func:`schedule_fractions`) in absolute steps of a run of ``num_steps`` steps (:func:`step_at`).

    Step i of a B-step schedule -> round(i * N / B), half up (exact rational arithmetic). Where two thresholds land on
    one step the higher threshold wins. 10 steps turn the official ``{0: .05, 10: .5, 20: .8}``,
    ``max_iter_to_alter`` 25 into ``{0: .05, 2: .5, 4: .8}`` and 5; 20 steps into ``{0: .05, 4: .5, 8: .8}`` and 10.
    ``num_steps`` is the number of steps the sampler really runs (``ldm.models.diffusion.samplers.steps_run``). A
    config whose ``schedule_steps`` is None is returned unchanged.
    """
    if config.schedule_steps is None:
        return config
    base = config.schedule_steps
    thresholds = rescale_thresholds(config.thresholds, base, num_steps)
    alter = rescale_step(config.max_iter_to_alter, base, num_steps)
    return replace(config, thresholds=thresholds, max_iter_to_alter=alter, schedule_steps=None)


def step_size(config: AttendExciteConfig, step: int, num_steps: int) -> float:
    """alpha_i = scale_factor * sqrt(linspace(scale_range[0], scale_range[1], num_steps)[i]) (float64 like numpy)."""
    return linspace_step_size(config.scale_factor, config.scale_range, step, num_steps)
