"""Which positions of a prompt a guidance method excites: the token table and the ``--ae_tokens`` lookup.

Pure functions over the text encoder's tokenizer and the prompt's token ids *after* the textual-inversion splice
(``ids, _ = embedding_manager(ids, token_embedding(ids))``), so positions match what the UNet attends to.

Conventions (the official A&E ones): positions index the padded 77-token sequence; 0 is the start token
(``<|startoftext|>`` / ``[CLS]``); the prompt's tokens follow from 1 up to the end token (``<|endoftext|>`` /
``[SEP]``). Only those prompt positions can be excited.

``--ae_tokens`` is a comma-separated list mixing 1-based positions and words, e.g. ``"*,dog"`` or ``"2,dog"``.
The rule for a word that occupies several positions (a word split into sub-tokens, or a multi-vector placeholder
whose k vectors sit at k consecutive positions and shift later ones): the word is **one** excited token whose score
is the **max over its positions**. A word is matched at its first occurrence in the prompt; use a position number to
pick a later one. A word the tokenizer does not know (it maps to the unknown token, ``[UNK]``) is an error: it would
match any other unknown word of the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ldm.errors import UserError

TokenGroup = tuple[int, ...]


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as the UNet sees it: token ids after the placeholder splice, and their names.

    ``table`` lists ``(position, token string)`` from the start token through the end token (placeholders by their
    string); ``eot`` is the end token's position; ``placeholders`` maps a placeholder's token id to its string.
    """

    prompt: str
    ids: tuple[int, ...]  # [77]
    placeholders: Mapping[int, str]
    table: tuple[tuple[int, str], ...]
    eot: int


def prompt_tokens(model: Any, prompt: str) -> PromptTokens:
    """The :class:`PromptTokens` of ``prompt`` for ``model`` (its text encoder's tokenizer and, when the model has
    one, its embedding manager's splice, so multi-vector placeholders shift later positions as they do in the UNet).
    """
    encoder = model.cond_stage_model
    ids = encoder.tokenize([prompt])  # [1, 77]
    manager = getattr(model, "embedding_manager", None)
    placeholders: dict[int, str] = {}
    if manager is not None:
        placeholders = {int(tok): s for s, tok in manager.string_to_token_dict.items()}
        with torch.no_grad():
            ids, _ = manager(ids, encoder.token_embedding(ids))
    flat = tuple(int(i) for i in ids[0].tolist())
    tokenizer = encoder.tokenizer
    return PromptTokens(prompt, flat, placeholders, tuple(token_table(flat, tokenizer, placeholders)),
                        end_position(flat, tokenizer))  # fmt: skip


def end_token_id(tokenizer: Any) -> int:
    """The id that ends the prompt: CLIP's ``<|endoftext|>`` or BERT's ``[SEP]``."""
    for attr in ("sep_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a [SEP] nor an end-of-text token")


def end_position(ids: Sequence[int], tokenizer: Any) -> int:
    """Position of the end token (after the prompt's tokens); ``len(ids) - 1`` if the prompt was truncated."""
    end_id = end_token_id(tokenizer)
    for pos in range(1, len(ids)):
        if int(ids[pos]) == end_id:
            return pos
    return len(ids) - 1


def token_table(
    ids: Sequence[int], tokenizer: Any, placeholders: Mapping[int, str] | None = None
) -> list[tuple[int, str]]:
    """``[(position, token string)]`` from the start token through the end token.

    ``placeholders`` maps a placeholder's token id to its string (shown instead of the tokenizer's spelling).
    """
    placeholders = placeholders or {}
    last = end_position(ids, tokenizer)
    table = []
    for pos in range(last + 1):
        tid = int(ids[pos])
        table.append((pos, placeholders.get(tid) or tokenizer.convert_ids_to_tokens(tid)))
    return table


def format_token_table(table: Sequence[tuple[int, str]]) -> str:
    """``"0: <|startoftext|>  1: a</w>  2: cat</w> ..."`` (what the scripts print)."""
    return "  ".join(f"{pos}: {tok}" for pos, tok in table)


def _units(ids: Sequence[int], first: int, last: int, placeholder_ids: set[int]) -> list[tuple[int, TokenGroup]]:
    """The prompt positions ``first..last-1`` as units: a run of one placeholder id (its vectors) is one unit."""
    units: list[tuple[int, TokenGroup]] = []
    for pos in range(first, last):
        tid = int(ids[pos])
        if units and tid in placeholder_ids and units[-1][0] == tid:
            units[-1] = (tid, (*units[-1][1], pos))
        else:
            units.append((tid, (pos,)))
    return units


def _word_ids(word: str, tokenizer: Any, placeholders: Mapping[int, str]) -> list[int]:
    for tid, text in placeholders.items():
        if text == word:
            return [tid]
    return [int(i) for i in tokenizer(word, add_special_tokens=False)["input_ids"]]


def resolve_ae_tokens(
    spec: str | Sequence[str | int],
    ids: Sequence[int],
    tokenizer: Any,
    placeholders: Mapping[int, str] | None = None,
) -> tuple[TokenGroup, ...]:
    """Resolve ``--ae_tokens`` (``"*,dog"``, ``"2,dog"``, ``[2, 5]``) to position groups of one prompt.

    Args:
        spec: comma-separated string, or a list of words and 1-based positions. Empty: nothing to excite.
        ids: the prompt's (spliced) token ids ``[77]``.
        tokenizer: the text encoder's HF tokenizer.
        placeholders: placeholder token id -> placeholder string (from the embedding manager).
    Returns one tuple of positions per requested token (several positions for a multi-position word).
    Raises ``ValueError`` showing the token table for a word not in the prompt or a position outside it.
    """
    placeholders = dict(placeholders or {})
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    last = end_position(ids, tokenizer)
    units = _units(ids, 1, last, set(placeholders))

    def fail(message: str) -> UserError:
        table = format_token_table(token_table(ids, tokenizer, placeholders))
        return UserError(f"--ae_tokens: {message}. Token table of the prompt (position: token): {table}")

    unk = getattr(tokenizer, "unk_token_id", None)
    framing = {getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id")}

    groups: list[TokenGroup] = []
    for item in items:
        if item.lstrip("-").isdigit():
            pos = int(item)
            if not 1 <= pos < last:
                raise fail(f"position {pos} is outside the prompt's tokens 1..{last - 1}")
            groups.append((pos,))
            continue
        word_ids = _word_ids(item, tokenizer, placeholders)
        if not word_ids:
            raise fail(f"'{item}' tokenises to nothing")
        if unk is not None and unk not in framing and unk in word_ids:
            unknown = f"'{item}' is not in the tokenizer's vocabulary (it maps to {tokenizer.unk_token})"
            raise fail(unknown + _vocab_hint(tokenizer))
        match = next(
            (
                tuple(p for _, positions in units[u : u + len(word_ids)] for p in positions)
                for u in range(len(units) - len(word_ids) + 1)
                if [tid for tid, _ in units[u : u + len(word_ids)]] == word_ids
            ),
            None,
        )
        if match is None:
            pieces = tokenizer.convert_ids_to_tokens(word_ids)
            raise fail(f"'{item}' (tokens {pieces}) is not in the prompt")
        groups.append(match)
    return tuple(groups)


def _vocab_hint(tokenizer: Any, max_words: int = 200) -> str:
    """``"; the vocabulary is: a, and, ..."`` for a small vocabulary (e.g. ToyWorld's), else ``""``."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if not vocab or len(vocab) > max_words:
        return ""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words = sorted(w for w in vocab if w not in special)
    return f"; the vocabulary is: {', '.join(words)}"


def describe_groups(groups: Sequence[TokenGroup], table: Sequence[tuple[int, str]]) -> str:
    """``"2 (cat</w>), 4-6 (*)"``: the excited positions and their tokens, for the scripts' log."""
    names = dict(table)
    parts = []
    for group in groups:
        span = str(group[0]) if len(group) == 1 else f"{group[0]}-{group[-1]}"
        tokens = " ".join(dict.fromkeys(names.get(p, "?") for p in group))
        parts.append(f"{span} ({tokens})")
    return ", ".join(parts)
