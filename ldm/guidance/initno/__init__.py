"""INITNO as a registered guidance method (``--guidance initno``): start-noise optimisation, then A&E-style updates."""

from __future__ import annotations

from pathlib import Path

from ldm.guidance.attend_excite.config import scale_schedule
from ldm.guidance.base import GuidanceMethod, GuidanceRequest
from ldm.guidance.initno.config import InitNOConfig
from ldm.guidance.initno.method import InitNO

__all__ = ["METHOD", "InitNO", "InitNOConfig"]

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "guidance"


def build(request: GuidanceRequest) -> InitNO | None:
    """INITNO on each sample's ``--ae_tokens`` groups (None when no sample names any)."""
    if not any(request.token_groups):
        return None
    return InitNO(
        request.model, request.config, token_indices=request.token_groups,
        eot_positions=[t.eot for t in request.tokens], on_maps=request.on_maps,
    )  # fmt: skip


METHOD = GuidanceMethod(
    name="initno",
    title="INITNO",
    paper="Guo et al., CVPR 2024",
    config_class=InitNOConfig,
    build=build,
    needs_tokens=True,
    presets={"default": PRESETS / "initno.yaml"},
    for_steps=scale_schedule,
)
