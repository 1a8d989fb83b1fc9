"""The small x-transformer used by LDM's ``BERTEmbedder`` (text encoder of LDM text2img-large).

A compact re-implementation of the subset of lucidrains' x-transformers that latent-diffusion vendored: a
pre-LayerNorm encoder of alternating multi-head attention and feed-forward layers (Vaswani et al. 2017) with
learned absolute positions. ``state_dict`` names match the original (``token_emb``, ``pos_emb.emb``,
``attn_layers.layers.N.{0,1}``, ``norm``, ``to_logits``), so LDM checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.encoders.base import TokenSplice

DEFAULT_DIM_HEAD = 64


class AbsolutePositionalEmbedding(nn.Module):
    """Learned position table; returns ``[1, N, D]`` for an input of length N."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return self.emb(positions)[None, :, :]  # [1, N, D]


class FeedForward(nn.Module):
    """Linear(dim, mult*dim) -> GELU -> dropout -> Linear(mult*dim, dim_out)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()),
            nn.Dropout(dropout),
            nn.Linear(inner_dim, dim_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention, softmax(Q K^T / sqrt(d_head)) V (no biases on Q, K, V)."""

    def __init__(
        self, dim: int, dim_head: int = DEFAULT_DIM_HEAD, heads: int = 8, causal: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, -1).transpose(1, 2)  # [B, heads, N, d_head]

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(x)), split_heads(self.to_v(x))
        attn_mask = None
        if mask is not None:
            if self.causal:
                raise NotImplementedError("causal attention with a padding mask is not supported")
            # mask: [B, N] bool, True = keep. As in the original, a pair (i, j) is kept only if both are;
            # fully masked rows become uniform instead of NaN.
            pair = mask[:, None, :, None] & mask[:, None, None, :]  # [B, 1, N, N]
            attn_mask = torch.zeros(pair.shape, dtype=q.dtype, device=q.device)
            attn_mask.masked_fill_(~pair, -torch.finfo(q.dtype).max)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )  # [B, heads, N, d_head]
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Residual(nn.Module):
    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual


class AttentionLayers(nn.Module):
    """Alternating attention ('a') and feed-forward ('f') layers, each ``[norm, block, residual]``.

    Keyword arguments starting with ``attn_`` / ``ff_`` go to every :class:`Attention` / :class:`FeedForward`
    (``attn_dim_head``, ``attn_dropout``, ``ff_mult``, ``ff_dropout``), as in x-transformers.
    """

    def __init__(
        self, dim: int, depth: int, heads: int = 8, causal: bool = False, pre_norm: bool = True, **kwargs: Any
    ) -> None:
        super().__init__()
        attn_kwargs = {k[len("attn_") :]: v for k, v in kwargs.items() if k.startswith("attn_")}
        ff_kwargs = {k[len("ff_") :]: v for k, v in kwargs.items() if k.startswith("ff_")}
        unknown = [k for k in kwargs if not k.startswith(("attn_", "ff_"))]
        if unknown:
            raise TypeError(f"AttentionLayers got unsupported options {unknown}")
        self.dim = dim
        self.depth = depth
        self.pre_norm = pre_norm
        self.layer_types = ("a", "f") * depth
        self.layers = nn.ModuleList()
        for layer_type in self.layer_types:
            if layer_type == "a":
                block: nn.Module = Attention(dim, heads=heads, causal=causal, **attn_kwargs)
            else:
                block = FeedForward(dim, **ff_kwargs)
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), block, Residual()]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer_type, (norm, block, residual_fn) in zip(self.layer_types, self.layers):
            residual = x
            if self.pre_norm:
                x = norm(x)
            x = block(x, mask=mask) if layer_type == "a" else block(x)
            x = residual_fn(x, residual)
            if not self.pre_norm:
                x = norm(x)
        return x


class Encoder(AttentionLayers):
    """Bidirectional (non-causal) attention layers."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs: Any) -> None:
        if kwargs.pop("causal", False):
            raise ValueError("Encoder is not causal")
        super().__init__(dim=dim, depth=depth, heads=heads, causal=False, **kwargs)


class TransformerWrapper(nn.Module):
    """Token embedding + learned positions -> attention layers -> LayerNorm (-> logits).

    Args:
        num_tokens: vocabulary size.
        max_seq_len: number of learned positions.
        attn_layers: an :class:`AttentionLayers` (e.g. :class:`Encoder`).
        emb_dim: token-embedding width (defaults to ``attn_layers.dim``; projected to it when different).
        emb_dropout: dropout after the embeddings.
        tie_embedding: compute logits with the token-embedding matrix instead of ``to_logits``.
        use_pos_emb: add the learned positional embedding.
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        emb_dim: int | None = None,
        emb_dropout: float = 0.0,
        tie_embedding: bool = False,
        use_pos_emb: bool = True,
    ) -> None:
        super().__init__()
        dim = attn_layers.dim
        emb_dim = dim if emb_dim is None else emb_dim
        self.max_seq_len = max_seq_len
        self.num_tokens = num_tokens
        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        self.pos_emb = AbsolutePositionalEmbedding(emb_dim, max_seq_len) if use_pos_emb else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.to_logits = None if tie_embedding else nn.Linear(dim, num_tokens)

    def forward(
        self,
        x: torch.Tensor,
        return_embeddings: bool = False,
        mask: torch.Tensor | None = None,
        embedding_manager: TokenSplice | None = None,
    ) -> torch.Tensor:
        """Token ids ``[B, N]`` -> ``[B, N, dim]`` (``return_embeddings``) or logits ``[B, N, num_tokens]``.

        Textual-inversion hook: ``embedding_manager(ids, token_embeddings)`` runs on the raw token embeddings,
        before the positional embedding is added.
        """
        h = self.token_emb(x)  # [B, N, emb_dim]
        if embedding_manager is not None:
            _, h = embedding_manager(x, h)
        if self.pos_emb is not None:
            h = h + self.pos_emb(h)
        h = self.project_emb(self.emb_dropout(h))
        h = self.norm(self.attn_layers(h, mask=mask))  # [B, N, dim]
        if return_embeddings:
            return h
        if self.to_logits is None:
            return h @ self.token_emb.weight.t()
        return self.to_logits(h)
