"""Moved to :mod:`ldm.guidance.attend_excite.maps` (the guidance package); this path keeps old imports working."""

from __future__ import annotations

from ldm.guidance.attend_excite.maps import (  # noqa: F401
    attend_excite_loss,
    capture_token_maps,
    group_token_maps,
    max_attention_per_token,
    token_attention_maps,
)
from ldm.guidance.capture import blocks_at_resolution  # noqa: F401
from ldm.guidance.denoiser import cross_attention_context  # noqa: F401
from ldm.guidance.engine import StepMaps  # noqa: F401
