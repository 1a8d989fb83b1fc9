"""The settings of CONFORM (official defaults: the notebook's) and their 50-step schedule rescaled to a run."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ldm.guidance.schedule import linspace_step_size, rescale_step

LOSS_REDUCTIONS = ("per_sample", "shared")


@dataclass(frozen=True)
class ConformConfig:
    """Every knob of CONFORM; defaults are the official notebook's (``ConformPipeline.__call__`` differs in two:
    ``max_iter_to_alter`` 25 and ``softmax_normalize`` True; tests/fixtures/guidance/conform/README.md).

    Attributes:
        groups: the token groups, ``"red cat|blue frog"``: groups split by ``|``, members by spaces or commas, each a
            word of the prompt (first occurrence; a word split into sub-tokens or a multi-vector placeholder adds
            all its positions) or a 1-based position. Empty: the prompt's parse (``parser``, ldm/guidance/parse.py):
            each noun with its modifiers; with ``--ae_tokens``, the phrases of those words (a word the parse puts in
            no phrase is a group of its own).
        parser, spacy_model: the parse without ``groups`` (as SynGen's: ``"auto"`` uses spaCy when installed, else
            the built-in rules; ``"rules"``; ``"spacy"``).
        attention_res: side of the cross-attention maps used (16: 16x16 maps).
        max_iter_to_alter: the regular update runs at steps ``i < max_iter_to_alter``.
        iterative_refinement_steps: at these steps the latent is first updated ``max_refinement_steps`` times (no
            threshold: CONFORM always runs them all), then gets the regular update.
        max_refinement_steps: the iterations of a refinement step (the official ``refinement_steps``).
        scale_factor, scale_range: step size ``scale_factor * sqrt(linspace(*scale_range, num_steps)[i])`` (A&E's).
        temperature: tau of the InfoNCE loss.
        smooth_attentions, sigma, kernel_size: the Gaussian smoothing of each map (A&E's reference kernel).
        softmax_normalize: softmax of ``softmax_scale * maps`` over text positions 1..75 first (script default).
        softmax_normalize_attention_maps: softmax of ``softmax_scale * map`` over each map's pixels last.
        softmax_scale: the factor of both softmaxes (the official 100).
        add_previous_attention_maps: the memory: the previous step's maps join the loss as positives of the same
            group (the "same word at consecutive steps" pairs).
        previous_attention_map_anchor_step: None: the memory is the previous step's maps; a step k: the maps of
            step k serve every later step.
        loss_reduction: ``"per_sample"`` (one loss and memory per sample) or ``"shared"`` (one loss on the maps
            averaged over the batch).
        schedule_steps: the step count the step indices above were written for (rescaled to the run, as A&E's).
        checkpoint_guidance: gradient checkpointing in the guidance pass (A&E's knob).
    """

    groups: str = ""
    parser: str = "auto"
    spacy_model: str = "en_core_web_trf"
    attention_res: int = 16
    max_iter_to_alter: int = 30
    iterative_refinement_steps: tuple[int, ...] = (0, 10, 20)
    max_refinement_steps: int = 20
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    temperature: float = 0.5
    smooth_attentions: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    softmax_normalize: bool = False
    softmax_normalize_attention_maps: bool = False
    softmax_scale: float = 100.0
    add_previous_attention_maps: bool = True
    previous_attention_map_anchor_step: int | None = None
    loss_reduction: str = "per_sample"
    schedule_steps: int | None = 50
    checkpoint_guidance: bool = False

    def __post_init__(self) -> None:
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.attention_res < 1 or self.kernel_size < 1 or self.max_refinement_steps < 0:
            raise ValueError("attention_res and kernel_size must be >= 1 and max_refinement_steps >= 0")
        steps = tuple(sorted({int(s) for s in self.iterative_refinement_steps}))
        if any(s < 0 for s in steps):
            raise ValueError(f"iterative_refinement_steps must be step indices >= 0, got {steps}")
        object.__setattr__(self, "iterative_refinement_steps", steps)
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))

    def memory_step(self, step: int) -> bool:
        """Whether the maps of ``step`` become the memory of the following steps."""
        anchor = self.previous_attention_map_anchor_step
        return self.add_previous_attention_maps and (anchor is None or anchor == step)


def scale_schedule(config: ConformConfig, num_steps: int) -> ConformConfig:
    """The step indices written for ``config.schedule_steps`` steps, rescaled to ``num_steps``: i -> round(i*S/base)
    (half up, as A&E's ``scale_schedule``). 10 steps turn the defaults into ``max_iter_to_alter`` 6 and refinement at
    steps 0, 2, 4. A config whose ``schedule_steps`` is None is returned unchanged."""
    base = config.schedule_steps
    if base is None:
        return config

    def rescale(i: int) -> int:
        return rescale_step(i, base, num_steps)

    anchor = config.previous_attention_map_anchor_step
    return replace(
        config,
        max_iter_to_alter=rescale(config.max_iter_to_alter),
        iterative_refinement_steps=tuple(rescale(s) for s in config.iterative_refinement_steps),
        previous_attention_map_anchor_step=None if anchor is None else rescale(anchor),
        schedule_steps=None,
    )


def step_size(config: ConformConfig, step: int, num_steps: int) -> float:
    """alpha_i = scale_factor * sqrt(linspace(scale_range[0], scale_range[1], num_steps)[i]) (float64 like numpy)."""
    return linspace_step_size(config.scale_factor, config.scale_range, step, num_steps)
