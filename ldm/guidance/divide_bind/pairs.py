"""Which attribute each Divide & Bind subject is bound to: the ``--g_pairs`` spec resolved on one prompt.

``--g_pairs "red:cat,blue:frog"``: comma-separated ``modifier:noun`` pairs (SynGen's syntax), each side a word or a
1-based position, looked up with the ``--ae_tokens`` rules (``ldm/guidance/tokens.py``: a word is matched at its first
occurrence; a word split into sub-tokens or a multi-vector placeholder such as ``*`` is one group). Each noun must be
one of the subjects (``--ae_tokens``) and carries at most one attribute, as in the official code (one colour index per
subject; 0 for none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ldm.errors import UserError
from ldm.guidance.tokens import PromptTokens, TokenGroup, describe_groups, resolve_ae_tokens

__all__ = ["parse_pair_spec", "attributes_of_subjects", "parsed_attributes"]


def parse_pair_spec(spec: str) -> list[tuple[str, str]]:
    """``"red:cat, blue:frog"`` -> ``[("red", "cat"), ("blue", "frog")]``; ``ValueError`` for another syntax (the
    config checks it, so a flag or YAML mistake is reported before a model loads)."""
    pairs = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"expected 'modifier:noun' pairs like 'red:cat,blue:frog', got {item!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _resolve(word: str, tokens: PromptTokens, tokenizer: Any) -> TokenGroup:
    try:
        return resolve_ae_tokens([word], tokens.ids, tokenizer, tokens.placeholders)[0]
    except UserError as err:  # the lookup names --ae_tokens; here the word came from --g_pairs
        raise UserError(str(err).replace("--ae_tokens:", f"--g_pairs ({word!r} in {tokens.prompt!r}):", 1)) from err


def attributes_of_subjects(
    spec: str, subjects: Sequence[TokenGroup], tokens: PromptTokens, tokenizer: Any
) -> tuple[TokenGroup | None, ...]:
    """Per subject, the positions of its attribute (None: no binding term for it)."""
    attributes: list[TokenGroup | None] = [None] * len(subjects)
    for modifier, noun in parse_pair_spec(spec):
        noun_group = _resolve(noun, tokens, tokenizer)
        if noun_group not in subjects:
            named = describe_groups(subjects, tokens.table)
            raise UserError(f"--g_pairs: the noun {noun!r} of '{modifier}:{noun}' is not one of the --ae_tokens "
                            f"subjects ({named}) in {tokens.prompt!r}; add it to --ae_tokens")  # fmt: skip
        k = list(subjects).index(noun_group)
        if attributes[k] is not None:
            raise UserError(f"--g_pairs: {noun!r} has two attributes; Divide & Bind binds one per subject")
        attributes[k] = _resolve(modifier, tokens, tokenizer)
    return tuple(attributes)


def parsed_attributes(
    subjects: Sequence[TokenGroup], tokens: PromptTokens, parser: str = "auto", spacy_model: str = "en_core_web_trf"
) -> tuple[TokenGroup | None, ...]:
    """Per subject, the positions of its first modifier in the prompt's parse (None: the parse gives it none)."""
    from ldm.guidance.parse import PLACEHOLDERS, prompt_phrases, prompt_words

    placeholders = set(PLACEHOLDERS) | set(tokens.placeholders.values())
    words = prompt_words(tokens.table, placeholders)
    phrases = prompt_phrases(tokens.prompt, words, parser, spacy_model, placeholders)
    attributes: list[TokenGroup | None] = []
    for subject in subjects:
        phrase = next((ph for ph in phrases if set(ph.noun.positions) & set(subject)), None)
        attributes.append(tuple(phrase.modifiers[0].positions) if phrase and phrase.modifiers else None)
    return tuple(attributes)
