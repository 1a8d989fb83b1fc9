"""Text encoders for the conditioning stage: ``BERTEmbedder`` (LDM text2img-large) and ``FrozenCLIPEmbedder`` (SD v1,
SDXL's first tower); SD 2's ``FrozenOpenCLIPEmbedder`` (``openclip.py``) is importable from here too.

All share one API (``base.py``, see ``docs/architecture.md``): ``tokenizer``, ``max_length``, ``embedding_dim``,
``tokenize(texts) -> [B, 77]``, ``token_embedding(ids)``, ``encode_ids(ids, embedding_manager=None) -> [B, 77, D]``,
``encode(texts, embedding_manager=None)`` (= ``forward``) and ``single_token_id(word)``.

Textual-inversion hook (the only one): ``emb = token_embedding(ids)``; ``ids, emb = embedding_manager(ids, emb)``;
then the position embedding and the transformer.

Tokenizer files ship with the package (``tokenizer_files/``), so nothing is fetched from a model hub.
``device`` arguments are accepted for config compatibility; tokens always go to the device of the module's
parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ldm.modules.encoders.base import (  # noqa: F401  (the shared API, importable from here as before)
    _CHECKED_PROMPTS,
    BERT_VOCAB_FILE,
    CLIP_L_VERSION,
    CLIP_MERGES_FILE,
    CLIP_VOCAB_FILE,
    COND_PARAMS_KEY,
    MAX_CHECKED_PROMPTS,
    TOKENIZER_DIR,
    AbstractEncoder,
    TokenSplice,
    _as_list,
    _id_tensor,
    _require_file,
    _TextEncoder,
    clean_clip_text,
    warn_prompt_problems,
)
from ldm.modules.encoders.clip_text import CLIPTextTower
from ldm.modules.encoders.openclip import FrozenOpenCLIPEmbedder  # noqa: F401  (the released SD 2 configs name it here)
from ldm.modules.x_transformer import Encoder, TransformerWrapper

logger = logging.getLogger(__name__)

CLIP_LAYERS = ("last", "hidden")


def bert_tokenizer(vocab_file: str | Path, max_length: int = 77) -> Any:
    """A ``BertTokenizerFast`` over ``vocab_file`` (lower-casing). A vocabulary without ``[MASK]`` (ToyWorld's, whose
    slot 4 holds the placeholder ``@``) gets no mask token: the tokenizer would otherwise add one at an id past the
    embedding table."""
    from transformers import BertTokenizerFast

    lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
    extra = {} if "[MASK]" in lines else {"mask_token": None}
    return BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True, model_max_length=max_length, **extra)


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
        vocab = _require_file(
            vocab_file, BERT_VOCAB_FILE, "BERT vocabulary (bert-base-uncased vocab.txt)", "vocab_file"
        )
        self.tokenizer = bert_tokenizer(vocab, max_length)
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

    layer_used = "last"

    @property
    def num_layers(self) -> int:
        return self.transformer.attn_layers.depth

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

    def encode_ids(self, ids: torch.Tensor, embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        ids = ids.to(self._device())
        return self.transformer(ids, return_embeddings=True, embedding_manager=embedding_manager)  # [B, N, D]

    def forward(
        self, text: str | Sequence[str] | torch.Tensor, embedding_manager: TokenSplice | None = None
    ) -> torch.Tensor:
        if isinstance(text, torch.Tensor):
            return self.encode_ids(text, embedding_manager=embedding_manager)
        return self.encode(text, embedding_manager=embedding_manager)


class FrozenCLIPEmbedder(_TextEncoder):
    """SD v1's text encoder: the CLIP ViT-L/14 BPE tokenizer and text tower (last hidden state, ``[B, 77, 768]``).

    ``layer="hidden"`` with ``layer_idx`` i returns the output of block i without the final LayerNorm instead
    (transformers' ``hidden_states[i]``; SDXL's first tower: i = 11 of 12), as the sgm reference's options of the
    same names.

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
        layer: str = "last",
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPTokenizer

        if layer not in CLIP_LAYERS:
            raise ValueError(f"FrozenCLIPEmbedder: layer must be one of {CLIP_LAYERS}, got {layer!r}")
        if layer == "hidden" and (layer_idx is None or not 0 <= abs(layer_idx) <= num_hidden_layers):
            raise ValueError(
                f"FrozenCLIPEmbedder: layer 'hidden' needs layer_idx in -{num_hidden_layers}..{num_hidden_layers}, "
                f"got {layer_idx}"
            )

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
        self.layer = layer
        # transformers' hidden_states index: layer_idx 11 = the output of block 11 (of 12), no final LayerNorm
        self.layer_idx = None if layer == "last" else layer_idx % (num_hidden_layers + 1)
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

    @property
    def num_layers(self) -> int:
        return self.transformer.num_layers

    @property
    def layer_used(self) -> str:
        return "last" if self.layer_idx is None else f"hidden:{self.layer_idx}"

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

    def encode_ids(self, ids: torch.Tensor, embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        ids = ids.to(self._device())
        emb = self.token_embedding(ids)  # [B, N, D]
        if embedding_manager is not None:
            ids, emb = embedding_manager(ids, emb)
        return self.transformer(inputs_embeds=emb, hidden_layer=self.layer_idx)  # [B, N, D]
