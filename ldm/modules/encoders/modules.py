"""Text encoders for the conditioning stage: ``BERTEmbedder`` (LDM text2img-large) and ``FrozenCLIPEmbedder`` (SD v1).

Both share one API (see ``docs/architecture.md``): ``tokenizer``, ``max_length``, ``embedding_dim``,
``tokenize(texts) -> [B, 77]``, ``token_embedding(ids)``, ``encode_ids(ids, embedding_manager=None) -> [B, 77, D]``,
``encode(texts, embedding_manager=None)`` (= ``forward``) and ``single_token_id(word)``.

Textual-inversion hook (the only one): ``emb = token_embedding(ids)``; ``ids, emb = embedding_manager(ids, emb)``;
then the position embedding and the transformer.

Tokenizer files ship with the package (``tokenizer_files/``), so nothing is fetched from a model hub.
``device`` arguments are accepted for config compatibility; tokens always go to the device of the module's
parameters.
"""

from __future__ import annotations

import html
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ldm.errors import MissingFileError
from ldm.modules.encoders.clip_text import CLIPTextTower
from ldm.modules.x_transformer import Encoder, TransformerWrapper
from ldm.util import repo_path

if TYPE_CHECKING:
    from ldm.modules.embedding_manager import EmbeddingManager

logger = logging.getLogger(__name__)

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

    def encode_ids(self, ids: torch.Tensor, embedding_manager: EmbeddingManager | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, texts: str | Sequence[str], embedding_manager: EmbeddingManager | None = None) -> torch.Tensor:
        """Texts -> conditioning ``[B, max_length, embedding_dim]``."""
        return self.encode_ids(self.tokenize(texts), embedding_manager=embedding_manager)

    def forward(self, text: str | Sequence[str], embedding_manager: EmbeddingManager | None = None) -> torch.Tensor:
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
            pieces = self.tokenizer.convert_ids_to_tokens(content)
            raise ValueError(
                f"'{word}' is not a single token for {type(self).__name__}: it tokenises to {len(content)} "
                f"tokens {pieces}. Placeholder strings and initializer words must be one token each; "
                "choose another string (e.g. '*' or a short common word)."
            )
        return content[0]


class BERTTokenizer(AbstractEncoder):
    """bert-base-uncased WordPiece tokenizer: ``[CLS] words [SEP] [PAD]...`` padded/truncated to ``max_length``."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        vq_interface: bool = True,
        max_length: int = 77,
        vocab_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        from transformers import BertTokenizerFast

        vocab = _require_file(
            vocab_file, BERT_VOCAB_FILE, "BERT vocabulary (bert-base-uncased vocab.txt)", "vocab_file"
        )
        self.tokenizer = BertTokenizerFast(vocab, model_max_length=max_length)
        self.device = device
        self.vq_interface = vq_interface
        self.max_length = max_length

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(_as_list(text), truncation=True, max_length=self.max_length, padding="max_length")
        tokens = _id_tensor(ids["input_ids"])  # [B, max_length]
        return tokens if self.device is None else tokens.to(self.device)

    @torch.no_grad()
    def encode(self, text: str | Sequence[str]) -> Any:
        tokens = self(text)
        if not self.vq_interface:
            return tokens
        return None, None, [None, None, tokens]

    def decode(self, text: Any) -> Any:
        return text


class BERTEmbedder(_TextEncoder):
    """LDM's text encoder: BERT tokenizer + an x-transformer trained from scratch with the diffusion model.

    Args:
        n_embed: width D (1280 for text2img-large).
        n_layer: number of attention + feed-forward pairs (32 for text2img-large).
        vocab_size: token-embedding rows (30522, bert-base-uncased).
        max_seq_len: sequence length (77).
        device: accepted for config compatibility, unused.
        use_tokenizer: if False, ``forward`` takes token ids instead of strings.
        embedding_dropout: dropout on the embeddings.
        vocab_file: bert-base-uncased ``vocab.txt`` (default: the bundled copy).
    """

    def __init__(
        self,
        n_embed: int,
        n_layer: int,
        vocab_size: int = 30522,
        max_seq_len: int = 77,
        device: str | torch.device | None = None,
        use_tokenizer: bool = True,
        embedding_dropout: float = 0.0,
        vocab_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.use_tknz_fn = use_tokenizer
        if use_tokenizer:
            self.tknz_fn = BERTTokenizer(vq_interface=False, max_length=max_seq_len, vocab_file=vocab_file)
        self.max_length = max_seq_len
        self.embedding_dim = n_embed
        self.transformer = TransformerWrapper(
            num_tokens=vocab_size,
            max_seq_len=max_seq_len,
            attn_layers=Encoder(dim=n_embed, depth=n_layer),
            emb_dropout=embedding_dropout,
        )

    @property
    def tokenizer(self) -> Any:
        if not self.use_tknz_fn:
            raise RuntimeError("BERTEmbedder was built with use_tokenizer=False; it has no tokenizer")
        return self.tknz_fn.tokenizer

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        if not self.use_tknz_fn:
            raise RuntimeError("BERTEmbedder was built with use_tokenizer=False; pass token ids to encode_ids()")
        return self.tknz_fn(texts).cpu()  # [B, max_length]: [CLS] words [SEP] [PAD]...

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.token_emb(ids)  # [..., D], no positional term

    def encode_ids(self, ids: torch.Tensor, embedding_manager: EmbeddingManager | None = None) -> torch.Tensor:
        ids = ids.to(self._device())
        return self.transformer(ids, return_embeddings=True, embedding_manager=embedding_manager)  # [B, N, D]

    def forward(
        self, text: str | Sequence[str] | torch.Tensor, embedding_manager: EmbeddingManager | None = None
    ) -> torch.Tensor:
        if isinstance(text, torch.Tensor):
            return self.encode_ids(text, embedding_manager=embedding_manager)
        return self.encode(text, embedding_manager=embedding_manager)


class FrozenCLIPEmbedder(_TextEncoder):
    """SD v1's text encoder: the CLIP ViT-L/14 BPE tokenizer and text tower (last hidden state, ``[B, 77, 768]``).

    The tower is built from the size parameters (CLIP-L by default) and gets its weights from the LDM checkpoint
    (``cond_stage_model.transformer.text_model.*``); ``version`` is only checked, never downloaded.
    """

    def __init__(
        self,
        version: str = CLIP_L_VERSION,
        device: str | torch.device | None = None,
        max_length: int = 77,
        vocab_file: str | Path | None = None,
        merges_file: str | Path | None = None,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        vocab_size: int = 49408,
        layer_norm_eps: float = 1e-5,
        hidden_act: str = "quick_gelu",
    ) -> None:
        super().__init__()
        from transformers import CLIPTokenizer

        if version != CLIP_L_VERSION:
            logger.warning(
                "FrozenCLIPEmbedder(version=%r): nothing is downloaded; the tower is built from the size parameters "
                "and the tokenizer from the bundled CLIP BPE files.",
                version,
            )
        vocab = _require_file(vocab_file, CLIP_VOCAB_FILE, "CLIP tokenizer vocabulary (vocab.json)", "vocab_file")
        merges = _require_file(merges_file, CLIP_MERGES_FILE, "CLIP tokenizer merges (merges.txt)", "merges_file")
        self._tokenizer = CLIPTokenizer(vocab, merges, model_max_length=max_length)
        self.max_length = max_length
        self.embedding_dim = hidden_size
        self.transformer = CLIPTextTower(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            max_position_embeddings=max_length,
            layer_norm_eps=layer_norm_eps,
            hidden_act=hidden_act,
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def freeze(self) -> None:
        self.transformer = self.transformer.eval()
        for param in self.parameters():
            param.requires_grad = False

    def _prepared(self, text: str) -> str:
        return clean_clip_text(text)

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        texts = [clean_clip_text(t) for t in texts]
        ids = self._tokenizer(texts, truncation=True, max_length=self.max_length, padding="max_length")
        return _id_tensor(ids["input_ids"])  # [B, max_length]; BOS 49406, then words, EOS = pad 49407

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.token_embedding(ids)  # [..., D], no positional term

    def encode_ids(self, ids: torch.Tensor, embedding_manager: EmbeddingManager | None = None) -> torch.Tensor:
        ids = ids.to(self._device())
        emb = self.token_embedding(ids)  # [B, N, D]
        if embedding_manager is not None:
            ids, emb = embedding_manager(ids, emb)
        return self.transformer(inputs_embeds=emb)  # [B, N, D]


def __getattr__(name: str) -> Any:
    """``FrozenOpenCLIPEmbedder`` (SD 2.x) lives in ``openclip.py``; the released configs name it here."""
    if name == "FrozenOpenCLIPEmbedder":
        from ldm.modules.encoders.openclip import FrozenOpenCLIPEmbedder

        return FrozenOpenCLIPEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
