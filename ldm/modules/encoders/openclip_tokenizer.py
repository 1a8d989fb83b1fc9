"""The tokenizer of SD 2.x's OpenCLIP text tower: CLIP's byte-level BPE with OpenCLIP's framing and text cleaning.

Ids: ``[49406 (start), prompt tokens..., 49407 (end), 0, 0, ...]`` padded to ``context_length`` (77). A prompt longer
than ``context_length - 2`` tokens is cut to ``context_length`` ids whose last one is replaced by the end token.
Padding with 0 (the id of ``!``) is OpenCLIP's convention; SD v1's CLIP tokenizer pads with the end token instead.

Text cleaning, in order: a repair step standing in for ``ftfy.fix_text`` (see ``fix_text``), HTML unescaping twice,
whitespace runs -> one space, strip, lower-case. Words are split with CLIP's pattern (contractions, letter runs,
single digits, runs of other non-space characters), mapped byte-wise to printable symbols and merged by rank.

The vocabulary and merges are the bundled CLIP files (``tokenizer_files/clip``); nothing is downloaded.
"""

from __future__ import annotations

import html
import json
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex
import torch

CLIP_DIR = Path(__file__).resolve().parent / "tokenizer_files" / "clip"
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"

# CLIP's word pattern: the special tokens, English contractions, letter runs, single digits, other symbol runs.
WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
TERMINAL_ESCAPE = regex.compile(r"\x1b\[((?:\d|;)*)([a-zA-Z])")
QUOTES = str.maketrans(  # ftfy's uncurl_quotes: U+02BC, U+2018-U+201B -> ', U+201C-U+201F -> "
    {**{ch: "'" for ch in "\u02bc\u2018\u2019\u201a\u201b"}, **{ch: '"' for ch in "\u201c\u201d\u201e\u201f"}}
)
LIGATURES = str.maketrans(
    {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"}
)
LINE_BREAKS = regex.compile(r"\r\n|\r|\u2028|\u2029|\u0085")
# ftfy's remove_control_chars: C0 controls but tab, newline, form feed and carriage return; DEL; deprecated format
# characters; byte-order mark; interlinear annotation and object replacement; language tags.
CONTROL_CHARS = regex.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc\U000e0000-\U000e007f]")
C1_CONTROLS = regex.compile("[\x80-\x9f]")


def _is_width_variant(ch: str) -> bool:
    return "\uff01" <= ch <= "\uff5e" or ch == "\u3000" or "\uff61" <= ch <= "\uffdc"


def _c1_as_cp1252(match: regex.Match) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        return match.group()


def _fix_mojibake(text: str) -> str:
    """UTF-8 read as Windows-1252 or Latin-1 (``cafÃ©`` -> ``café``), when the whole text round-trips."""
    if text.isascii():
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            fixed = text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
        return fixed
    return text


def fix_text(text: str) -> str:
    """The parts of ``ftfy.fix_text`` (ftfy 6 defaults) that change ordinary prompts; ftfy is not a dependency.

    Done: terminal escape codes removed; mojibake repaired when the whole text is UTF-8 read as Windows-1252/Latin-1;
    HTML entities unescaped once when the text has no ``<`` (ftfy's "auto"); C1 controls read as Windows-1252; Latin
    ligatures split (``ﬁ`` -> ``fi``); full-width/half-width forms made normal width; curly quotes made straight;
    line breaks made ``\\n``; ftfy's set of control characters removed; NFC normalisation. Not done: ftfy's partial
    (per-segment, scored) mojibake repair of mixed text and its lossy-sequence repair; on such text the ids can differ.
    """
    text = TERMINAL_ESCAPE.sub("", text)
    text = _fix_mojibake(text)
    if "<" not in text:
        text = html.unescape(text)
    text = C1_CONTROLS.sub(_c1_as_cp1252, text)
    text = text.translate(LIGATURES)
    text = "".join(unicodedata.normalize("NFKC", ch) if _is_width_variant(ch) else ch for ch in text)
    text = text.translate(QUOTES)
    text = LINE_BREAKS.sub("\n", text)
    text = CONTROL_CHARS.sub("", text)
    return unicodedata.normalize("NFC", text)


def clean_text(text: str) -> str:
    """OpenCLIP's cleaning: fix, unescape HTML twice, collapse whitespace, strip, lower-case."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """Byte -> printable symbol: printable Latin-1 bytes map to themselves, the rest to chr(256 + k) in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1)]
    keep += list(range(ord("\u00ae"), ord("\u00ff") + 1))
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class OpenCLIPTokenizer:
    """CLIP BPE with OpenCLIP conventions and a small transformers-like surface for the project's token code.

    ``ids(texts)`` -> ``[B, context_length]`` int64 (the conditioning ids); ``__call__(text, add_special_tokens)``
    -> ``{"input_ids": [...]}`` unpadded; ``convert_ids_to_tokens``; the special ids as attributes.
    """

    bos_token_id = 49406
    eos_token_id = 49407
    pad_token_id = 0
    unk_token_id = None
    cls_token_id = None
    sep_token_id = None

    def __init__(
        self,
        context_length: int = 77,
        vocab_file: str | Path | None = None,
        merges_file: str | Path | None = None,
    ) -> None:
        vocab_path = Path(vocab_file or CLIP_DIR / "vocab.json")
        merges_path = Path(merges_file or CLIP_DIR / "merges.txt")
        for path, key in ((vocab_path, "vocab_file"), (merges_path, "merges_file")):
            if not path.is_file():
                raise FileNotFoundError(
                    f"OpenCLIP tokenizer file '{path}' not found; scripts/build_tokenizer_files.py rebuilds the "
                    f"bundled copies, or set cond_stage_config.params.{key} to your copy"
                )
        self.encoder: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        lines = merges_path.read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}  # type: ignore[misc]
        if self.encoder.get(START_TOKEN) != self.bos_token_id or self.encoder.get(END_TOKEN) != self.eos_token_id:
            raise ValueError(f"'{vocab_path}' is not the CLIP vocabulary (start/end ids are not 49406/49407)")
        self.context_length = context_length
        self.vocab_size = len(self.encoder)
        self._cache: dict[str, list[str]] = {}

    def _bpe(self, word: str) -> list[str]:
        """Merge the symbols of one word (the last carries ``</w>``) by ascending merge rank."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """The prompt's token ids, without start/end tokens or padding."""
        symbols = byte_symbols()
        ids: list[int] = []
        for word in WORD_PATTERN.findall(clean_text(text)):
            if word in (START_TOKEN, END_TOKEN):
                ids.append(self.encoder[word])
                continue
            mapped = "".join(symbols[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(mapped))
        return ids

    def ids(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """``[B, context_length]`` ids: start, prompt, end, then 0s; over-long prompts are cut and end on the end id."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.int64, device="cpu")
        for row, text in enumerate(texts):
            tokens = [self.bos_token_id, *self.encode(text), self.eos_token_id]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eos_token_id
            out[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        return out

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **kwargs: Any) -> dict[str, Any]:
        def one(t: str) -> list[int]:
            ids = self.encode(t)
            return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

        return {"input_ids": one(text) if isinstance(text, str) else [one(t) for t in text]}

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.decoder[ids]
        return [self.decoder[int(i)] for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to (cleaned) text: the start token is dropped and everything from the end token on."""
        ids = [int(i) for i in ids]
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        inverse = {s: b for b, s in byte_symbols().items()}
        text = "".join(self.decoder[i] for i in ids if i != self.bos_token_id).replace("</w>", " ")
        raw = bytes(ord(" ") if ch == " " else inverse[ch] for ch in text)
        return raw.decode("utf-8", errors="replace").strip()
