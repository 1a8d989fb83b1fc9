"""CONFORM's token groups: an object and its attributes, from ``--g_groups`` or from the ``--ae_tokens`` entries.

Syntax of ``--g_groups``: groups split by ``|``, members by spaces or commas; a member is a word of the prompt or a
1-based position (0 is the start token), as in ``--ae_tokens``: ``"red cat|blue frog"``, ``"2 3|6 7"``,
``"yellow *|@"``. A word is matched at its first occurrence (use a position for a later one); a word split into
sub-tokens, or a multi-vector placeholder, adds all its positions to the group. A position may be in one group only.
Without ``--g_groups`` every ``--ae_tokens`` entry is a group of its own (objects without attributes; the official
code's ``[[2], [5]]`` for "a cat and a frog").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ldm.errors import UserError
from ldm.guidance.tokens import PromptTokens, TokenGroup, resolve_ae_tokens


def parse_groups(spec: str) -> list[list[str]]:
    """``"red cat|blue frog"`` -> ``[["red", "cat"], ["blue", "frog"]]``; an empty group is an error."""
    if not spec.strip():
        return []
    groups = [[m for m in re.split(r"[\s,]+", part) if m] for part in spec.split("|")]
    if any(not g for g in groups):
        raise UserError(f"--g_groups {spec!r}: an empty group; write groups as 'red cat|blue frog' (split by '|')")
    return groups


def resolve_groups(spec: str, tokens: PromptTokens, tokenizer: Any) -> tuple[TokenGroup, ...]:
    """The position groups ``spec`` names in one prompt (one tuple of positions per group)."""
    resolved: list[TokenGroup] = []
    for members in parse_groups(spec):
        try:
            parts = resolve_ae_tokens(members, tokens.ids, tokenizer, tokens.placeholders)
        except UserError as err:  # the shared lookup names --ae_tokens; this flag is --g_groups
            raise UserError(str(err).replace("--ae_tokens", f"--g_groups {spec!r}", 1)) from err
        resolved.append(tuple(p for part in parts for p in part))
    return check_disjoint(resolved, spec)


def check_disjoint(groups: Sequence[TokenGroup], spec: str, flag: str = "--g_groups") -> tuple[TokenGroup, ...]:
    """``groups`` as tuples; a position in two groups is an error."""
    seen: set[int] = set()
    for group in groups:
        twice = seen.intersection(group)
        if twice:
            raise UserError(
                f"{flag} {spec!r}: position(s) {sorted(twice)} are in two groups; a word repeated in the prompt "
                "matches its first occurrence, so give the later one by its position (e.g. 'red cat|6 frog')"
            )
        seen.update(group)
    return tuple(tuple(g) for g in groups)


def sample_groups(
    spec: str, tokens: PromptTokens, tokenizer: Any, ae_groups: Sequence[TokenGroup]
) -> tuple[TokenGroup, ...]:
    """One prompt's groups: from ``spec`` when given, else each ``--ae_tokens`` entry alone."""
    if spec.strip():
        return resolve_groups(spec, tokens, tokenizer)
    return check_disjoint([tuple(g) for g in ae_groups], str([list(g) for g in ae_groups]), "--ae_tokens")
