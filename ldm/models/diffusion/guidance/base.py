"""Moved to :mod:`ldm.guidance.base` (the guidance package); this path keeps old imports working."""

from __future__ import annotations

from ldm.guidance.base import (  # noqa: F401
    HIDDEN_FIELDS,
    GuidanceMethod,
    GuidanceRequest,
    LatentGuidance,
    NoSettings,
)
