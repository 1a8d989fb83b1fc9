"""Attend-and-Excite as a registered guidance method (``--guidance ae``, or ``--ae_tokens`` alone)."""

from __future__ import annotations

from pathlib import Path

from ldm.guidance.attend_excite.config import AttendExciteConfig, scale_schedule
from ldm.guidance.attend_excite.method import AttendAndExcite
from ldm.guidance.base import GuidanceMethod, GuidanceRequest

__all__ = ["METHOD", "AttendAndExcite", "AttendExciteConfig"]

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "guidance"


def build(request: GuidanceRequest) -> AttendAndExcite | None:
    """A&E on each sample's ``--ae_tokens`` groups (None when no sample names any)."""
    if not any(request.token_groups):
        return None
    return AttendAndExcite(
        request.model, request.config, token_indices=request.token_groups,
        eot_positions=[t.eot for t in request.tokens], on_maps=request.on_maps,
    )  # fmt: skip


METHOD = GuidanceMethod(
    name="ae",
    title="Attend-and-Excite",
    paper="Chefer et al., SIGGRAPH 2023",
    config_class=AttendExciteConfig,
    build=build,
    needs_tokens=True,
    presets={
        "default": PRESETS / "attend_and_excite.yaml",
        "sd2": PRESETS / "attend_and_excite_sd2.yaml",
        "sdxl": PRESETS / "attend_and_excite_sdxl.yaml",
    },
    for_steps=scale_schedule,
)
