"""CONFORM's token groups: an object and its attributes, from ``--g_groups`` or from the ``--ae_tokens`` entries.

Syntax of ``--g_groups``: groups split by ``|``, members by spaces or commas; a member is a word of the prompt or a
1-based position (0 is the start token), as in ``--ae_tokens``: ``"red cat|blue frog"``, ``"2 3|6 7"``,
``"yellow *|@"``. A word is matched at its first occurrence (use a position for a later one); a word split into
sub-tokens, or a multi-vector placeholder, adds all its positions to the group. A position may be in one group only.
Without ``--g_groups`` the groups come from the prompt's parse (the rule parser SynGen uses, ``ldm/guidance/parse.py``):
each noun with its modifiers ("a red cat and a blue frog" -> ``red cat|blue frog``); with ``--ae_tokens`` only the
phrases of those words, and an ``--ae_tokens`` word in no phrase is a group of its own (the official code's
``[[2], [5]]`` for "a cat and a frog").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ldm.errors import UserError
from ldm.guidance.parse import PLACEHOLDERS, bindings, prompt_phrases, prompt_words
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


def parsed_groups(
    tokens: PromptTokens, ae_groups: Sequence[TokenGroup], parser: str = "auto", spacy_model: str = "en_core_web_trf"
) -> list[TokenGroup]:
    """The prompt's noun phrases as groups (modifiers then noun); with ``ae_groups``, the phrase of each of them
    (the whole group when the parse puts the word in no phrase)."""
    placeholders = set(PLACEHOLDERS) | set(tokens.placeholders.values())
    words = prompt_words(tokens.table, placeholders)
    phrases = bindings(prompt_phrases(tokens.prompt, words, parser, spacy_model, placeholders), include_entities=True)
    groups = [tuple(p for w in (*ph.modifiers, ph.noun) for p in w.positions) for ph in phrases]
    if not ae_groups:
        return groups
    return [next((g for g in groups if set(g) & set(ae)), tuple(ae)) for ae in ae_groups]


def sample_groups(
    spec: str, tokens: PromptTokens, tokenizer: Any, ae_groups: Sequence[TokenGroup], parser: str = "auto",
    spacy_model: str = "en_core_web_trf",
) -> tuple[TokenGroup, ...]:  # fmt: skip
    """One prompt's groups: from ``spec`` when given, else from the prompt's parse (see the module docstring)."""
    if spec.strip():
        return resolve_groups(spec, tokens, tokenizer)
    groups = list(dict.fromkeys(parsed_groups(tokens, ae_groups, parser, spacy_model)))
    return check_disjoint(groups, str([list(g) for g in groups]), "--ae_tokens")
