"""Moved to :mod:`ldm.guidance.attend_excite.config` (the guidance package); this path keeps old imports working."""

from __future__ import annotations

from ldm.guidance.attend_excite.config import (  # noqa: F401
    LOSS_REDUCTIONS,
    SOFTMAX_ENDS,
    AttendExciteConfig,
    TokenGroup,
    normalize_token_indices,
    scale_schedule,
    step_size,
)
