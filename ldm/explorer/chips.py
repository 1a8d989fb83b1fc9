"""A prompt as word chips: each chip is what one ``--ae_tokens`` item excites, shown with its positions and kind.

Pure functions over the model's tokenizer and the prompt's token ids after the placeholder splice
(``ldm.inference.prompt_tokens``), so chips use the same lookup as the scripts
(:func:`ldm.guidance.tokens.resolve_ae_tokens`):

- a word split into several sub-tokens is one chip (one excited token, the max over its positions);
- a placeholder (``*``) is one chip, over all its vectors when it has several;
- a word the tokenizer does not know (BERT's ``[UNK]``) is marked ``unknown``;
- a word cut off by the text encoder's length limit is marked ``truncated`` and cannot be selected.

Each chip carries the ``--ae_tokens`` item that selects it: the word itself when the lookup finds this chip (its first
occurrence), otherwise its 1-based position (a later occurrence; for a multi-position word the position selects its
first sub-token only, as on the command line, and the chip's ``positions`` say so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ldm.guidance.tokens import end_position, resolve_ae_tokens

__all__ = ["Chip", "prompt_chips", "spec_for", "selection_for"]

_SUB_PIECES = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class Chip:
    """One selectable word of the prompt."""

    text: str  # the word as typed (or the token, where the prompt could not be split into words)
    positions: tuple[int, ...]  # the positions the chip's ``spec`` excites (after the placeholder splice)
    tokens: tuple[str, ...]  # the tokenizer's tokens at the word's positions
    kind: str  # "word" | "sub-words" | "placeholder" | "unknown" | "truncated"
    spec: str  # the --ae_tokens item selecting it ("" for a truncated word)

    @property
    def label(self) -> str:
        """What the chip shows: the word, its positions, and its kind where that helps to choose."""
        if not self.positions:
            return f"{self.text} [cut off]"
        first, last = self.positions[0], self.positions[-1]
        span = str(first) if first == last else f"{first}-{last}"
        notes = {"sub-words": f"{len(self.tokens)} tokens", "placeholder": f"{len(self.positions)} vector(s)",
                 "unknown": "unknown word"}  # fmt: skip
        return f"{self.text} [{span}, {notes[self.kind]}]" if self.kind in notes else f"{self.text} [{span}]"

    @property
    def selectable(self) -> bool:
        return bool(self.spec)


def _piece_ids(piece: str, tokenizer: Any, placeholders: Mapping[str, int]) -> list[int]:
    if piece in placeholders:
        return [placeholders[piece]]
    return [int(i) for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]


def _pieces(prompt: str, tokenizer: Any, placeholders: Mapping[str, int]) -> list[tuple[str, list[int]]]:
    """The prompt's words with their token ids: whitespace-separated chunks, split further into words and
    punctuation where that tokenizes to the same ids (it does not, e.g., for CLIP's ``'s``)."""
    out = []
    for chunk in prompt.split():
        whole = _piece_ids(chunk, tokenizer, placeholders)
        parts = _SUB_PIECES.findall(chunk)
        part_ids = [_piece_ids(p, tokenizer, placeholders) for p in parts]
        if len(parts) > 1 and [i for ids in part_ids for i in ids] == whole:
            out.extend(zip(parts, part_ids))
        else:
            out.append((chunk, whole))
    return [(text, ids) for text, ids in out if ids]


def _walk(
    ids: Sequence[int], start: int, end: int, piece_ids: Sequence[int], placeholder_ids: set[int]
) -> tuple[int, ...] | None:
    """The positions ``piece_ids`` occupy from ``start`` (a placeholder id covers its whole run), or None."""
    positions: list[int] = []
    pos = start
    for tid in piece_ids:
        if pos >= end or int(ids[pos]) != tid:
            return None
        positions.append(pos)
        pos += 1
        while tid in placeholder_ids and pos < end and int(ids[pos]) == tid:
            positions.append(pos)
            pos += 1
    return tuple(positions)


def _kind(positions: Sequence[int], ids: Sequence[int], tokenizer: Any, placeholder_ids: set[int]) -> str:
    if int(ids[positions[0]]) in placeholder_ids:
        return "placeholder"
    unk = getattr(tokenizer, "unk_token_id", None)
    end_ids = {getattr(tokenizer, a, None) for a in ("eos_token_id", "sep_token_id")}
    if unk is not None and unk not in end_ids and any(int(ids[p]) == unk for p in positions):
        return "unknown"
    return "sub-words" if len(positions) > 1 else "word"


def prompt_chips(
    prompt: str, ids: Sequence[int], tokenizer: Any, placeholders: Mapping[int, str] | None = None
) -> list[Chip]:
    """The chips of ``prompt`` whose spliced token ids are ``ids`` ``[77]`` (``placeholders``: id -> string).

    Words are matched to positions in order; where a word's ids do not match the prompt's (a tokenizer that splits
    differently in context), the rest of the prompt becomes one chip per token.
    """
    placeholders = dict(placeholders or {})
    by_text = {text: tid for tid, text in placeholders.items()}
    placeholder_ids = set(placeholders)
    end = end_position(ids, tokenizer)
    spans: list[tuple[str, tuple[int, ...]]] = []
    pos = 1
    pieces = _pieces(prompt, tokenizer, by_text)
    for n, (text, piece_ids) in enumerate(pieces):
        if pos >= end:
            spans.extend((t, ()) for t, _ in pieces[n:])
            break
        positions = _walk(ids, pos, end, piece_ids, placeholder_ids)
        if positions is None:  # fall back to one chip per token (a placeholder run is one)
            while pos < end:
                run = _walk(ids, pos, end, [int(ids[pos])], placeholder_ids) or (pos,)
                token = placeholders.get(int(ids[pos])) or tokenizer.convert_ids_to_tokens(int(ids[pos]))
                spans.append((token, run))
                pos = run[-1] + 1
            break
        spans.append((text, positions))
        pos = positions[-1] + 1
    chips = []
    for text, positions in spans:
        if not positions:
            chips.append(Chip(text, (), (), "truncated", ""))
            continue
        spec, excited = _spec_item(text, positions, ids, tokenizer, placeholders)
        tokens = tuple(placeholders.get(int(ids[p])) or tokenizer.convert_ids_to_tokens(int(ids[p])) for p in excited)
        chips.append(Chip(text, excited, tokens, _kind(positions, ids, tokenizer, placeholder_ids), spec))
    return chips


def _spec_item(
    text: str, positions: tuple[int, ...], ids: Sequence[int], tokenizer: Any, placeholders: Mapping[int, str]
) -> tuple[str, tuple[int, ...]]:
    """The ``--ae_tokens`` item for a chip and the positions it excites: the word when the lookup finds this chip,
    else its first position (words with commas or made of digits are always given by position)."""
    if "," not in text and not text.lstrip("-").isdigit():
        try:
            (found,) = resolve_ae_tokens([text], ids, tokenizer, placeholders)
        except ValueError:
            found = None
        if found == positions:
            return text, positions
    return str(positions[0]), (positions[0],)


def spec_for(chips: Sequence[Chip], selected: Sequence[int]) -> str:
    """The ``--ae_tokens`` string of the selected chips (by index), in prompt order."""
    return ",".join(chips[i].spec for i in sorted(set(selected)) if 0 <= i < len(chips) and chips[i].selectable)


def selection_for(chips: Sequence[Chip], spec: str) -> list[int]:
    """The chips a typed ``--ae_tokens`` string selects (items naming no chip are left to the run's lookup)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = []
    for item in items:
        for i, chip in enumerate(chips):
            by_position = item.isdigit() and (int(item),) == chip.positions
            if chip.selectable and (item in (chip.spec, chip.text) or by_position):
                chosen.append(i)
                break
    return sorted(set(chosen))
