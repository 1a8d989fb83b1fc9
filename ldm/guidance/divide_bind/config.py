"""The settings of Divide & Bind, with the official defaults (the ``tv_bind`` path of
``pipeline_divide_and_bind_latest.py`` as ``examples_generation_latest.ipynb`` calls it; README.md of
``tests/fixtures/guidance/divide_bind`` lists where the older pipeline and its notebooks differ)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ldm.guidance.attend_excite.config import SOFTMAX_ENDS, normalize_token_indices
from ldm.guidance.divide_bind.pairs import parse_pair_spec
from ldm.guidance.schedule import rescale_step, rescale_thresholds
from ldm.guidance.tokens import TokenGroup

__all__ = ["DivideBindConfig", "scale_schedule"]


@dataclass(frozen=True)
class DivideBindConfig:
    """Every knob of Divide & Bind; defaults are the official ones (50-step schedule).

    Attributes:
        token_indices: subject positions (from ``--ae_tokens``; per-prompt data, not a flag).
        pairs: attribute-subject pairs for the binding term, ``"red:cat,blue:frog"`` (words or 1-based positions,
            modifier first, the same syntax as SynGen's ``--g_pairs``); each noun must be one of the subjects.
            Empty: no binding term (the official default, ``color_indices=None``), unless ``pairs_from_prompt``.
        pairs_from_prompt: without ``pairs``, bind each subject to its modifier in the prompt's parse (the parser
            SynGen and CONFORM use, ``ldm/guidance/parse.py``; ``parser``/``spacy_model`` as theirs).
        attention_res: side of the cross-attention maps of the subjects (16: 16x16 maps).
        attribute_res: side of the maps the attributes are read from, resized (nearest) to ``attention_res``.
            None: every cross-attention side above ``attention_res`` (the official code reads the 64x64 and 32x32
            layers on SD 512 px, which are exactly those; on the tiny test model, the 32x32 ones).
        max_iter_to_alter: the regular update runs at steps ``i < max_iter_to_alter``.
        thresholds: ``{step: threshold}``; at these steps refine until every subject's TV reaches the threshold.
        max_refinement_steps: at most this many refinement iterations at a threshold step other than step 0.
        max_refinement_steps_init_step: the limit at step 0 (the official code keeps it apart).
        scale_factor, scale_range: step size ``scale_factor * sqrt(linspace(*scale_range, num_steps)[i])``.
        bind_weights: ``{step: weight}`` of the binding term; a step takes the value of the largest key <= step.
        bind_quantile, bind_quantile_low_tv, bind_low_tv: the cut of the binding distributions, ``q * max(P)``
            with ``q = bind_quantile_low_tv`` when the subject's TV is below ``bind_low_tv``, else ``bind_quantile``.
        bind_eps: added to both binding distributions after the cut.
        tv_last_row: the vertical TV term compares each row with the last row, as the official code does (False:
            with the neighbouring row, the paper's TV).
        smooth_attentions, sigma, kernel_size: the Gaussian smoothing of Attend-and-Excite (``smoothing.py``).
        softmax_scale, softmax_end: the maps are multiplied by ``softmax_scale`` before the softmax over the text
            positions ``[1:-1]`` (``"last"``) or ``[1:eot]`` (``"eot"``).
        loss_reduction: ``"per_sample"`` (the official pipeline) or ``"shared"``.
        schedule_steps: the step count the step-indexed settings were written for (rescaled to the steps run).
        checkpoint_guidance: gradient checkpointing in the guidance pass.
    """

    token_indices: tuple[int | TokenGroup, ...] = ()
    pairs: str = ""
    pairs_from_prompt: bool = False
    parser: str = "auto"
    spacy_model: str = "en_core_web_trf"
    attention_res: int = 16
    attribute_res: int | None = None
    max_iter_to_alter: int = 25
    thresholds: Mapping[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.2, 20: 0.3})
    max_refinement_steps: int = 50
    max_refinement_steps_init_step: int = 100
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    bind_weights: Mapping[int, float] = field(default_factory=lambda: {0: 1.0, 10: 5.0, 20: 10.0})
    bind_quantile: float = 0.2
    bind_quantile_low_tv: float = 0.3
    bind_low_tv: float = 0.1
    bind_eps: float = 1e-5
    tv_last_row: bool = True
    smooth_attentions: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    softmax_scale: float = 100.0
    softmax_end: str = "last"
    loss_reduction: str = "per_sample"
    schedule_steps: int | None = 50
    checkpoint_guidance: bool = False

    def __post_init__(self) -> None:
        if self.loss_reduction not in ("per_sample", "shared"):
            raise ValueError(f"loss_reduction must be 'per_sample' or 'shared', got {self.loss_reduction!r}")
        if self.softmax_end not in SOFTMAX_ENDS:
            raise ValueError(f"softmax_end must be one of {SOFTMAX_ENDS}, got {self.softmax_end!r}")
        if self.attention_res < 1 or self.kernel_size < 1:
            raise ValueError("attention_res and kernel_size must be >= 1")
        if self.attribute_res is not None and self.attribute_res < self.attention_res:
            raise ValueError(f"attribute_res {self.attribute_res} must be >= attention_res {self.attention_res}")
        if self.max_refinement_steps < 0 or self.max_refinement_steps_init_step < 0:
            raise ValueError("max_refinement_steps and max_refinement_steps_init_step must be >= 0")
        parse_pair_spec(self.pairs)  # syntax only; the words are looked up per prompt
        object.__setattr__(self, "thresholds", {int(k): float(v) for k, v in dict(self.thresholds).items()})
        object.__setattr__(self, "bind_weights", {int(k): float(v) for k, v in dict(self.bind_weights).items()})
        object.__setattr__(self, "token_indices", normalize_token_indices(self.token_indices))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))


def scale_schedule(config: DivideBindConfig, num_steps: int) -> DivideBindConfig:
    """Rescale the step-indexed settings (``thresholds``, ``max_iter_to_alter``, ``bind_weights``) written for
    ``config.schedule_steps`` steps to ``num_steps``: step i -> round(i * num_steps / schedule_steps), half up, as
    Attend-and-Excite's schedule. Where two thresholds land on one step the higher wins; where two weight keys do,
    the later one. Step 0 stays step 0, so ``max_refinement_steps_init_step`` keeps its meaning."""
    base = config.schedule_steps
    if base is None:
        return config

    thresholds = rescale_thresholds(config.thresholds, base, num_steps)
    weights = {rescale_step(step, base, num_steps): w for step, w in sorted(config.bind_weights.items())}
    alter = rescale_step(config.max_iter_to_alter, base, num_steps)
    return replace(config, thresholds=thresholds, bind_weights=weights, max_iter_to_alter=alter, schedule_steps=None)
