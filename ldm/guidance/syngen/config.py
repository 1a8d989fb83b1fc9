"""The settings of SynGen (``method.py`` has the method) and their step schedule for a run of any length."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ldm.guidance.schedule import rescale_step

PARSERS = ("auto", "rules", "spacy")
LOSS_REDUCTIONS = ("per_sample", "shared")


@dataclass(frozen=True)
class SynGenConfig:
    """Every knob of SynGen; defaults are the official ones (``SynGenDiffusionPipeline.__call__`` and run.py).

    Attributes:
        pairs: ``"red:circle,blue:square"``: modifier:noun pairs, words or 1-based positions (pairs with one noun
            make one phrase). Empty: the pairs come from the prompt's parse (``parser``).
        parser: ``"auto"``: spaCy when it and ``spacy_model`` are installed (the ``spacy`` extra), else the built-in
            rules (``ldm/guidance/parse.py``); ``"rules"``; ``"spacy"`` (an error when it cannot load).
        spacy_model: the spaCy pipeline to load (the official code uses en_core_web_trf).
        include_entities: nouns without modifiers also get the push-away term (the official ``include_entities``).
        attention_res: side of the cross-attention maps (16: the 16x16 maps of SD's 64x64 latent, as the official).
        max_iter_to_alter: the update runs at steps ``i < max_iter_to_alter`` (official ``num_intervention_steps``).
        scale_factor, scale_range: step size ``scale_factor * sqrt(linspace(*scale_range, num_steps)[i])`` as in
            A&E; the official SynGen step is constant (``syngen_step_size`` 20, range (1, 1)).
        schedule_steps: the step count ``max_iter_to_alter`` was written for (the official 50); runs of other
            lengths get ``round(max_iter_to_alter * S / schedule_steps)``. ``None``: already absolute.
        loss_reduction: ``"per_sample"`` (each sample its own loss, as the official batch-1 runs) or ``"shared"``
            (one loss on the maps averaged over the batch; the samples must share one prompt).
        checkpoint_guidance: recompute the guidance pass's UNet blocks in its backward (less memory).
    """

    pairs: str = ""
    parser: str = "auto"
    spacy_model: str = "en_core_web_trf"
    include_entities: bool = False
    attention_res: int = 16
    max_iter_to_alter: int = 25
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    schedule_steps: int | None = 50
    loss_reduction: str = "per_sample"
    checkpoint_guidance: bool = False

    def __post_init__(self) -> None:
        if self.parser not in PARSERS:
            raise ValueError(f"parser must be one of {PARSERS}, got {self.parser!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.attention_res < 1 or self.max_iter_to_alter < 0:
            raise ValueError("attention_res must be >= 1 and max_iter_to_alter >= 0")
        for item in (s.strip() for s in self.pairs.split(",")):
            if item and (item.count(":") != 1 or not all(p.strip() for p in item.split(":"))):
                raise ValueError(f"'{item}' in pairs is not a modifier:noun pair (e.g. \"red:circle,blue:square\")")
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))


def for_steps(config: SynGenConfig, num_steps: int) -> SynGenConfig:
    """The schedule in absolute steps of a ``num_steps`` run: ``max_iter_to_alter`` -> round(i * S / base), half up
    (the rule A&E's schedule uses). 50 steps keep the official 25; 10 steps give 5."""
    base = config.schedule_steps
    if base is None:
        return config
    steps = rescale_step(config.max_iter_to_alter, base, num_steps)
    return replace(config, max_iter_to_alter=steps, schedule_steps=None)
