"""CONFORM as a registered guidance method (``--guidance conform``; groups from ``--g_groups`` or the prompt's parse).

Meral et al., CVPR 2024, "CONFORM: Contrast is All You Need for High-Fidelity Text-to-Image Diffusion Models":
a contrastive (InfoNCE) loss on the smoothed cross-attention maps (``loss.py``) keeps each object's map close to its
attributes' maps and to its own map of the previous step, and apart from the other objects' maps; A&E's schedule and
update apply it (``method.py``).
"""

from __future__ import annotations

from pathlib import Path

from ldm.errors import UserError
from ldm.guidance.base import GuidanceMethod, GuidanceRequest
from ldm.guidance.conform.config import ConformConfig, scale_schedule
from ldm.guidance.conform.groups import sample_groups
from ldm.guidance.conform.method import Conform

__all__ = ["METHOD", "Conform", "ConformConfig"]

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "guidance"


def build(request: GuidanceRequest) -> Conform | None:
    """CONFORM on each sample's groups (None when no sample has any)."""
    config = request.config
    tokenizer = request.model.cond_stage_model.tokenizer
    groups = [sample_groups(config.groups, tokens, tokenizer, ae, config.parser, config.spacy_model)
              for tokens, ae in zip(request.tokens, request.token_groups)]  # fmt: skip
    if not any(groups):
        raise UserError("--guidance conform found no token groups: give --g_groups 'red cat|blue frog' (an object "
                        "and its attributes per group) or --ae_tokens 'cat,frog'")  # fmt: skip
    return Conform(request.model, config, groups, on_maps=request.on_maps)


METHOD = GuidanceMethod(
    name="conform",
    title="CONFORM",
    paper="Meral et al., CVPR 2024",
    config_class=ConformConfig,
    build=build,
    presets={"default": PRESETS / "conform.yaml"},
    for_steps=scale_schedule,
)
