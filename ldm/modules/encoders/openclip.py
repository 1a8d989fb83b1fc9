"""SD 2.x's text encoder: the OpenCLIP text tower (ViT-H/14's by default) and ``FrozenOpenCLIPEmbedder``.

The tower, written from its description: token embedding + learned positional embedding; ``layers`` pre-LayerNorm
residual blocks ``x = x + Attn(LN1(x))``, ``x = x + MLP(LN2(x))`` with causal multi-head self-attention (one packed
input projection ``in_proj_weight [3W, W]``) and a GELU (erf) MLP of width ``mlp_ratio * W``; a final LayerNorm
``ln_final``. ``layer="penultimate"`` (SD 2's choice) skips the last block and still applies ``ln_final``.

State-dict keys are the released ones (``cond_stage_model.model.*``): ``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection`` and ``logit_scale`` (kept for the released layout,
unused for conditioning). The released checkpoints hold no visual tower.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.encoders.base import TokenSplice, _TextEncoder, not_one_token
from ldm.modules.encoders.openclip_tokenizer import OpenCLIPTokenizer

logger = logging.getLogger(__name__)

LAYERS = ("last", "penultimate")


class OpenCLIPAttention(nn.Module):
    """Causal multi-head self-attention with a packed Q/K/V projection (``nn.MultiheadAttention``'s key names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"OpenCLIP text tower: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape  # [B, N, W]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, N, 3W]
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [B, h, N, d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # position i sees j <= i
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class OpenCLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = OpenCLIPAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = OpenCLIPMLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio, eps) for _ in range(layers))


class OpenCLIPTextTower(nn.Module):
    """The text half of an OpenCLIP model; defaults are ViT-H/14's (width 1024, 24 layers, 16 heads)."""

    def __init__(
        self,
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        context_length: int = 77,
        vocab_size: int = 49408,
        embed_dim: int = 1024,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width = width
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = OpenCLIPTransformer(width, layers, heads, mlp_ratio, layer_norm_eps)
        self.ln_final = nn.LayerNorm(width, eps=layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))  # pooled-text head (not used by SD)
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, token_embeddings: torch.Tensor, skip_last: int = 0) -> torch.Tensor:
        """Token embeddings ``[B, N, W]`` (no positional term) -> ``ln_final`` of block ``layers - skip_last``."""
        return self.ln_final(self.hidden_states(token_embeddings, skip_last)[0])  # block layers - skip_last

    def hidden_states(self, token_embeddings: torch.Tensor, skip_last: int = 0) -> list[torch.Tensor]:
        """The outputs ``[B, N, W]`` of the blocks ``layers - skip_last`` and ``layers`` (no ``ln_final``); only the
        first when ``skip_last`` is 0."""
        n = token_embeddings.shape[1]
        if n > self.context_length:
            raise ValueError(f"sequence length {n} exceeds the tower's context_length {self.context_length}")
        x = token_embeddings + self.positional_embedding[:n]  # [B, N, W]
        blocks = self.transformer.resblocks
        states = []
        for i, block in enumerate(blocks):
            if i == len(blocks) - skip_last:
                states.append(x)
            x = block(x)
        states.append(x)
        return states[:1] if skip_last == 0 else [states[0], states[-1]]

    def pooled(self, last: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """CLIP's text feature: ``ln_final`` of the last block's output at the end token (the highest id of each row,
        its first occurrence), times ``text_projection``: ``[B, N, W]`` -> ``[B, embed_dim]``."""
        rows = torch.arange(last.shape[0], device=last.device)
        return self.ln_final(last)[rows, ids.argmax(dim=-1)] @ self.text_projection  # [B, embed_dim]


class FrozenOpenCLIPEmbedder(_TextEncoder):
    """SD 2.x conditioning: OpenCLIP tokenizer + text tower, output ``[B, 77, W]`` of ``layer`` (last|penultimate).

    Args:
        arch, version: the reference's open_clip model and pretrained tag; accepted for config compatibility, nothing
            is downloaded (weights come from the SD checkpoint, ``cond_stage_model.model.*``).
        device: accepted for config compatibility; ids go to the parameters' device.
        max_length: context length (77).
        freeze: eval mode and no gradients for the tower.
        layer: ``"last"`` or ``"penultimate"`` (SD 2 configs use penultimate).
        width, layers, heads, vocab_size, embed_dim, mlp_ratio, layer_norm_eps: the tower's size (ViT-H/14's text
            tower by default; tiny towers for tests).
        vocab_file, merges_file: CLIP BPE files (default: the bundled copies).
    """

    def __init__(
        self,
        arch: str = "ViT-H-14",
        version: str | None = "laion2b_s32b_b79k",
        device: str | torch.device | None = None,
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        vocab_size: int = 49408,
        embed_dim: int = 1024,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-5,
        vocab_file: str | Path | None = None,
        merges_file: str | Path | None = None,
        legacy: bool = True,
        always_return_pooled: bool = False,
    ) -> None:
        super().__init__()
        if always_return_pooled and legacy:
            raise ValueError("FrozenOpenCLIPEmbedder: always_return_pooled needs legacy: False (as the sgm reference)")
        if layer not in LAYERS:
            raise ValueError(
                f"FrozenOpenCLIPEmbedder: layer must be one of {LAYERS} (cond_stage_config.params.layer), got {layer!r}"
            )
        if arch != "ViT-H-14" and width == 1024 and layers == 24:
            logger.warning("FrozenOpenCLIPEmbedder(arch=%r) builds ViT-H-14's text tower unless sizes are given", arch)
        logger.debug("FrozenOpenCLIPEmbedder: %s/%s is not downloaded; weights come from the checkpoint", arch, version)
        self._tokenizer = OpenCLIPTokenizer(max_length, vocab_file=vocab_file, merges_file=merges_file)
        self.max_length = max_length
        self.embedding_dim = width
        self.layer = layer
        self.layer_idx = LAYERS.index(layer)  # blocks skipped at the end
        self.legacy = legacy  # False: the penultimate layer without ln_final (SDXL's bigG, sgm's legacy=False)
        self.return_pooled = always_return_pooled
        self.model = OpenCLIPTextTower(
            width, layers, heads, max_length, vocab_size, embed_dim, mlp_ratio, layer_norm_eps
        )
        if freeze:
            self.freeze()

    @property
    def tokenizer(self) -> OpenCLIPTokenizer:
        return self._tokenizer

    @property
    def num_layers(self) -> int:
        return len(self.model.transformer.resblocks)

    @property
    def layer_used(self) -> str:
        return self.layer

    def freeze(self) -> None:
        self.model = self.model.eval()
        for param in self.parameters():
            param.requires_grad = False

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        return self._tokenizer.ids(texts, self.max_length)  # [B, 77]: 49406, prompt, 49407, 0...

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(ids)  # [..., W], no positional term

    def encode_ids(self, ids: torch.Tensor, embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        ids = ids.to(self._device())
        emb = self.token_embedding(ids)  # [B, N, W]
        if embedding_manager is not None:
            ids, emb = embedding_manager(ids, emb)
        if self.legacy:
            return self.model(emb, skip_last=self.layer_idx)  # [B, N, W]
        return self.encode_with_pooled(ids, emb)[0]

    def encode_with_pooled(self, ids: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``legacy: False`` (SDXL): the chosen layer's hidden state without ``ln_final`` ``[B, N, W]`` and the pooled
        text feature ``[B, embed_dim]`` (:meth:`OpenCLIPTextTower.pooled` of the last layer), from token ids and
        their (possibly spliced) token embeddings."""
        states = self.model.hidden_states(emb, skip_last=self.layer_idx)
        return states[0], self.model.pooled(states[-1], ids)

    def single_token_id(self, word: str) -> int:
        """The id of ``word`` if it is exactly one BPE token; ``ValueError`` naming the pieces otherwise."""
        content = self._tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(content) != 1:
            raise not_one_token(word, "FrozenOpenCLIPEmbedder", self._tokenizer.convert_ids_to_tokens(content))
        return int(content[0])

    def forward(self, text: str | Sequence[str], embedding_manager: TokenSplice | None = None) -> torch.Tensor:
        return self.encode(text, embedding_manager=embedding_manager)

    def extra_repr(self) -> str:
        return f"layer={self.layer}"


def tower_outputs(embedder: FrozenOpenCLIPEmbedder, ids: torch.Tensor) -> dict[str, Any]:
    """``{"last": [B, N, W], "penultimate": [B, N, W]}`` of one embedder on ``ids`` (for checks and tests)."""
    emb = embedder.token_embedding(ids.to(embedder._device()))
    return {name: embedder.model(emb, skip_last=i) for i, name in enumerate(LAYERS)}
