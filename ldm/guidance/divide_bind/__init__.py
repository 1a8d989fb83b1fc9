"""Divide & Bind as a registered guidance method (``--guidance divide_bind``)."""

from __future__ import annotations

from pathlib import Path

from ldm.guidance.base import GuidanceMethod, GuidanceRequest
from ldm.guidance.divide_bind.config import DivideBindConfig, scale_schedule
from ldm.guidance.divide_bind.method import DivideAndBind
from ldm.guidance.divide_bind.pairs import attributes_of_subjects, parsed_attributes
from ldm.guidance.engine import SampleTarget

__all__ = ["METHOD", "DivideAndBind", "DivideBindConfig"]

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "guidance"


def build(request: GuidanceRequest) -> DivideAndBind | None:
    """Divide & Bind on each sample's ``--ae_tokens`` subjects, each bound to its ``--g_pairs`` attribute (or, with
    ``pairs_from_prompt``, to its modifier in the prompt's parse)."""
    if not any(request.token_groups):
        return None
    config = request.config
    tokenizer = request.model.cond_stage_model.tokenizer if config.pairs.strip() else None
    targets = []
    for tokens, groups in zip(request.tokens, request.token_groups):
        if not config.pairs.strip() and config.pairs_from_prompt:
            attributes = parsed_attributes(groups, tokens, config.parser, config.spacy_model)
        else:
            attributes = attributes_of_subjects(config.pairs, groups, tokens, tokenizer)
        targets.append(SampleTarget(groups, tokens.eot, {"attributes": attributes}))
    return DivideAndBind(request.model, request.config, targets, on_maps=request.on_maps)


METHOD = GuidanceMethod(
    name="divide_bind",
    title="Divide & Bind",
    paper="Li et al., BMVC 2023",
    config_class=DivideBindConfig,
    build=build,
    needs_tokens=True,
    presets={"default": PRESETS / "divide_bind.yaml"},
    for_steps=scale_schedule,
)
