"""Moved to :mod:`ldm.guidance.visualize` (the guidance package); this path keeps old imports working."""

from __future__ import annotations

from ldm.guidance.visualize import (  # noqa: F401
    LABEL_HEIGHT,
    jet,
    overlay,
    render_attention,
)
