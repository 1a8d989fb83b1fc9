"""Moved to :mod:`ldm.guidance.tokens` (the guidance package); this path keeps old imports working."""

from __future__ import annotations

from ldm.guidance.tokens import (  # noqa: F401
    PromptTokens,
    TokenGroup,
    describe_groups,
    end_position,
    end_token_id,
    format_token_table,
    prompt_tokens,
    resolve_ae_tokens,
    token_table,
)
