"""SynGen as a registered guidance method (``--guidance syngen``): binds each modifier's attention to its noun's.

Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models: Enhancing Attribute Correspondence through
Attention Map Alignment". ``loss.py``: the loss; ``method.py``: the guidance object; ``config.py``: the settings.
"""

from __future__ import annotations

from pathlib import Path

from ldm.guidance.base import GuidanceMethod, GuidanceRequest
from ldm.guidance.syngen.config import SynGenConfig, for_steps
from ldm.guidance.syngen.method import SynGen, build_syngen

__all__ = ["METHOD", "SynGen", "SynGenConfig"]

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "guidance"


def build(request: GuidanceRequest) -> SynGen | None:
    """SynGen on each sample's modifier-noun pairs (``--g_pairs`` or the prompt's parse); the ``--ae_tokens`` words,
    when given, only choose the maps a viewer shows."""
    return build_syngen(request.model, request.config, request.tokens, request.on_maps, request.token_groups)


METHOD = GuidanceMethod(
    name="syngen",
    title="SynGen (linguistic binding)",
    paper="Rassin et al., NeurIPS 2023",
    config_class=SynGenConfig,
    build=build,
    presets={"default": PRESETS / "syngen.yaml"},
    for_steps=for_steps,
)
