"""The text encoders' shared API (``_TextEncoder``), prompt checks and the bundled tokenizer files.

Every text encoder (``BERTEmbedder``, ``FrozenCLIPEmbedder``, ``FrozenOpenCLIPEmbedder``) builds on ``_TextEncoder``:
``tokenizer``, ``max_length``, ``embedding_dim``, ``tokenize(texts) -> [B, 77]``, ``token_embedding(ids)``,
``encode_ids(ids, embedding_manager=None) -> [B, 77, D]``, ``encode(texts, embedding_manager=None)`` (= ``forward``),
``single_token_id(word)``; and for the model description (``ldm.models.description``): ``num_layers`` and
``layer_used``.

Textual-inversion hook (the only one): ``emb = token_embedding(ids)``; ``ids, emb = embedding_manager(ids, emb)``;
then the position embedding and the transformer. The hook is typed by :class:`TokenSplice` (any callable of that
shape), so no encoder imports the embedding manager.
"""

from __future__ import annotations

import html
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ldm.errors import MissingFileError
from ldm.util import repo_path

logger = logging.getLogger(__name__)


def not_one_token(word: str, encoder: str, pieces: list[str]) -> ValueError:
    """The error for a placeholder or initializer word that ``encoder``'s tokenizer splits into ``pieces``."""
    return ValueError(
        f"'{word}' is not a single token for {encoder}: it tokenises to {len(pieces)} tokens {pieces}. Placeholder "
        "strings and initializer words must be one token each; choose another string (e.g. '*' or a short common word)."
    )


class TokenSplice(Protocol):
    """The textual-inversion hook: ``(ids [B, N], token embeddings [B, N, D]) -> (ids, embeddings)``
    (``ldm.modules.embedding_manager.EmbeddingManager`` is one)."""

    def __call__(self, ids: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer_files"
BERT_VOCAB_FILE = TOKENIZER_DIR / "bert-base-uncased" / "vocab.txt"
CLIP_VOCAB_FILE = TOKENIZER_DIR / "clip" / "vocab.json"
CLIP_MERGES_FILE = TOKENIZER_DIR / "clip" / "merges.txt"
CLIP_L_VERSION = "openai/clip-vit-large-patch14"
COND_PARAMS_KEY = "model.params.cond_stage_config.params"


def _require_file(path: str | Path | None, default: Path, what: str, key: str) -> str:
    """The file ``path`` (a relative path may be relative to the repository, as in the shipped configs)."""
    path = repo_path(path) if path else default
    if not path.is_file():
        raise MissingFileError(
            f"{what} '{path}' not found. Provide it (scripts/build_tokenizer_files.py rebuilds the bundled copies) "
            f"or point the config key '{COND_PARAMS_KEY}.{key}' at your copy."
        )
    return str(path)


def clean_clip_text(text: str) -> str:
    """Text cleaning of the original CLIP tokenizer, minus ftfy.

    OpenAI's tokenizer runs ``ftfy.fix_text`` then ``html.unescape`` twice, and collapses whitespace; lower-casing
    is done by the tokenizer's normaliser. ftfy is not a dependency, so mojibake and curly quotes are not repaired
    here: ids can differ from the original on such text (ordinary text, and HTML entities, agree).
    """
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


# Prompts already checked by `warn_prompt_problems` (a bounded memory, so a training loop that tokenizes the same
# captions every step logs each problem once): logging state only.
_CHECKED_PROMPTS: OrderedDict[tuple[int, str], None] = OrderedDict()
MAX_CHECKED_PROMPTS = 4096


def warn_prompt_problems(tokenizer: Any, texts: Sequence[str], max_length: int) -> None:
    """Log a warning, once per prompt, when the tokenizer drops tokens (truncation to ``max_length``) or maps part
    of the prompt to the unknown token (emoji, CJK on BERT). Only logs; the token ids are not touched."""
    unk = getattr(tokenizer, "unk_token_id", None)
    framing = {getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id")}
    for text in texts:
        key = (id(tokenizer), text)
        if key in _CHECKED_PROMPTS:
            continue
        _CHECKED_PROMPTS[key] = None
        if len(_CHECKED_PROMPTS) > MAX_CHECKED_PROMPTS:
            _CHECKED_PROMPTS.popitem(last=False)
        try:
            enc = tokenizer(text, truncation=False, verbose=False, return_offsets_mapping=True)
        except NotImplementedError:  # slow tokenizers have no offsets
            enc = tokenizer(text, truncation=False, verbose=False)
        ids = enc["input_ids"]
        if len(ids) > max_length:
            logger.warning(
                "Prompt %r is %d tokens long; the text encoder keeps %d, so the last %d tokens are dropped",
                text, len(ids), max_length, len(ids) - max_length,
            )  # fmt: skip
        if unk is None or unk in framing or unk not in ids:
            continue
        offsets = enc.get("offset_mapping")
        spans = [text[a:b] for i, (a, b) in zip(ids, offsets, strict=True) if i == unk] if offsets else []
        shown = f" ({', '.join(repr(s) for s in spans)})" if spans else ""
        logger.warning(
            "Prompt %r: %d part(s)%s are not in the tokenizer's vocabulary and become %s; they carry no meaning",
            text, ids.count(unk), shown, tokenizer.unk_token,
        )  # fmt: skip


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _id_tensor(ids: list[list[int]]) -> torch.Tensor:
    # explicit CPU: tokenizing also works inside a `with torch.device("meta")` block
    return torch.tensor(ids, dtype=torch.int64, device="cpu")


class AbstractEncoder(nn.Module):
    def encode(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class _TextEncoder(AbstractEncoder):
    """The shared text-encoder API; subclasses define ``tokenizer``, ``_token_ids``, ``token_embedding`` and
    ``encode_ids``."""

    max_length: int
    embedding_dim: int

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[B, max_length]`` on the CPU."""
        raise NotImplementedError

    def _prepared(self, text: str) -> str:
        """The text as the tokenizer gets it (CLIP cleans it first)."""
        return text

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Texts -> padded/truncated token ids ``[B, max_length]`` on the parameters' device.

        A prompt that is truncated or has parts the tokenizer does not know is logged once (a warning).
        """
        texts = _as_list(texts)
        warn_prompt_problems(self.tokenizer, [self._prepared(t) for t in texts], self.max_length)
        return self._token_ids(texts).to(self._device())

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_ids(self, ids: torch.Tensor, embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, texts: str | Sequence[str], embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        """Texts -> conditioning ``[B, max_length, embedding_dim]``."""
        return self.encode_ids(self.tokenize(texts), embedding_manager=embedding_manager)

    def forward(self, text: str | Sequence[str], embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        return self.encode(text, embedding_manager=embedding_manager)

    def single_token_id(self, word: str) -> int:
        """The id of ``word`` if it is exactly one token (besides start/end/padding); ``ValueError`` otherwise."""
        ids = self._token_ids([word])[0].tolist()
        tok = self.tokenizer
        framing = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.cls_token_id, tok.sep_token_id}
        content = [i for i in ids if i not in framing]
        if content == [tok.unk_token_id]:
            raise ValueError(f"'{word}' is not in the {type(self).__name__} vocabulary (it maps to the unknown token)")
        if len(content) != 1:
            raise not_one_token(word, type(self).__name__, self.tokenizer.convert_ids_to_tokens(content))
        return content[0]
