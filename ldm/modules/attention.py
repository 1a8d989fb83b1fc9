"""Transformer attention used inside the LDM / Stable Diffusion UNet.

Class, attribute and parameter names follow CompVis latent-diffusion so released checkpoints load unchanged
(``to_q``/``to_k``/``to_v``/``to_out.0``, ``ff.net.0.proj``/``ff.net.2``, ``norm1..3``, ``proj_in``/``proj_out``).

Attention capture (``docs/architecture.md``, Seams): every ``CrossAttention`` has a ``controller`` attribute (default
``None``). When a controller is set and ``wants`` the layer, the layer computes the probabilities explicitly and
hands them to the controller (inside the autograd graph, on the compute device) before applying them to the values.
Layers nobody captures use ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.util import checkpoint, zero_module

__all__ = [
    "AttentionController",
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "GEGLU",
    "SpatialTransformer",
]


@runtime_checkable
class AttentionController(Protocol):
    """Receives attention probabilities from the ``CrossAttention`` layers it is registered on.

    ``wants(is_cross, place, layer_name, num_queries)`` is asked on every call before attention is computed; only when
    it returns True does the layer compute explicit probabilities and call the controller. ``place`` is ``"down"``,
    ``"mid"`` or ``"up"`` (set by the registering code), ``layer_name`` the module's name in the UNet and
    ``num_queries`` the number of query positions (``H*W`` of the feature map).

    ``__call__(probs, is_cross, place, layer_name)`` gets ``probs`` of shape ``[B*heads, N_query, N_key]``, heads
    folded batch-major (``(b h)``): ``[B*heads, HW, 77]`` for cross-attention, ``[B*heads, HW, HW]`` for self-attention.
    ``probs`` is part of the autograd graph (it requires grad whenever the input does); a controller must not modify it
    in place and should detach what it keeps unless it needs gradients through it.
    """

    def wants(self, is_cross: bool, place: str, layer_name: str, num_queries: int) -> bool: ...

    def __call__(self, probs: torch.Tensor, is_cross: bool, place: str, layer_name: str) -> None: ...


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): ``x W_a * GELU(x W_b)`` from one projection ``proj``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: ``net = [GEGLU or (Linear, GELU), Dropout, Linear]``."""

    def __init__(
        self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention when ``context`` is None).

    ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head)) V`` (Vaswani et al. 2017, eq. 1) with ``Q = x W_q``,
    ``K = c W_k``, ``V = c W_v``.

    Attributes (set from outside, never by ``forward``): ``controller`` (an ``AttentionController`` or None),
    ``place`` and ``layer_name`` (labels passed to the controller), ``use_sdpa`` (fused kernel for uncaptured calls).
    """

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.controller: AttentionController | None = None
        self.place = ""
        self.layer_name = ""
        self.use_sdpa = True

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape  # [B, N, heads*d]
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)  # [B, heads, N, d]

    def _key_mask(self, mask: torch.Tensor, batch: int, num_keys: int) -> torch.Tensor:
        """``[B, M]`` (or ``[B, ...]``) key mask, True = attend -> bool ``[B*heads, 1, M]``."""
        keep = mask.reshape(mask.shape[0], -1).bool()
        if keep.shape != (batch, num_keys):
            raise ValueError(
                f"CrossAttention mask has shape {tuple(mask.shape)}; expected [{batch}, {num_keys}] "
                "(batch, number of context positions), True where a position may be attended to"
            )
        return keep.repeat_interleave(self.heads, dim=0)[:, None, :]

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        is_cross = context is not None
        context = x if context is None else context
        batch, num_queries, _ = x.shape  # x: [B, N, query_dim]; context: [B, M, context_dim]
        q = self._split_heads(self.to_q(x))  # [B, heads, N, d]
        k = self._split_heads(self.to_k(context))  # [B, heads, M, d]
        v = self._split_heads(self.to_v(context))  # [B, heads, M, d]
        keep = None if mask is None else self._key_mask(mask, batch, k.shape[2])  # [B*heads, 1, M]
        controller = self.controller
        capture = controller is not None and controller.wants(is_cross, self.place, self.layer_name, num_queries)
        if capture or not self.use_sdpa:
            q, k, v = (t.flatten(0, 1) for t in (q, k, v))  # [B*heads, N|M, d], batch-major (b h)
            sim = torch.einsum("bid,bjd->bij", q, k) * self.scale  # [B*heads, N, M]
            if keep is not None:
                sim = sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)
            probs = sim.softmax(dim=-1)  # [B*heads, N, M]
            if capture:
                controller(probs, is_cross, self.place, self.layer_name)
            out = torch.bmm(probs, v).unflatten(0, (batch, self.heads))  # [B, heads, N, d]
        else:
            attn_mask = None
            if keep is not None:  # additive form of the explicit path's masked_fill
                attn_mask = torch.zeros(keep.shape, dtype=q.dtype, device=q.device)
                attn_mask = attn_mask.masked_fill(~keep, -torch.finfo(q.dtype).max).unflatten(0, (batch, self.heads))
            # 4-D inputs: the fused (flash) kernels need them; 3-D inputs fall back to the unfused math path.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)  # [B, heads, N, d]
        return self.to_out(out.transpose(1, 2).flatten(2))  # [B, N, heads*d] -> [B, N, query_dim]


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, cross-attention over the context, GEGLU feed-forward."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(
            query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # Never recompute a block whose attention is being captured: the controller would see every map twice.
        if self.attn1.controller is not None or self.attn2.controller is not None:
            return self._forward(x, context)
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint, self.training)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x  # [B, HW, dim]
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map (Rombach et al. 2022, sec. 3.3).

    ``GroupNorm -> 1x1 conv to n_heads*d_head -> depth x BasicTransformerBlock -> zero-initialised 1x1 conv``, plus a
    residual connection. ``use_checkpoint`` (not in the original signature, where the blocks always checkpoint) lets the
    UNet's ``use_checkpoint`` switch the blocks' gradient checkpointing. ``use_linear`` (SD 2.x) makes ``proj_in`` and
    ``proj_out`` ``nn.Linear`` layers applied to the flattened pixels (weights ``[out, in]`` instead of
    ``[out, in, 1, 1]``, as in the released SD 2 checkpoints); the two forms compute the same map.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_checkpoint: bool = True,
        use_linear: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.use_linear = use_linear
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim, checkpoint=use_checkpoint
            )
            for _ in range(depth)
        )
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_linear:
            return self._forward_linear(x, context)
        b, _, h, w = x.shape  # [B, C, H, W]
        x_in = x
        x = self.proj_in(self.norm(x))  # [B, inner, H, W]
        # Contiguous token layout for the blocks' LayerNorms and Linears (a strided transpose view would be copied
        # again by every op that needs a dense input); one copy in, one copy out.
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()  # [B, HW, inner]
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # [B, inner, H, W], contiguous for proj_out
        return self.proj_out(x) + x_in

    def _forward_linear(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The SD 2.x form: the projections act on the flattened pixels ``[B, HW, C]``."""
        b, _, h, w = x.shape  # [B, C, H, W]
        x_in = x
        x = self.norm(x).flatten(2).transpose(1, 2).contiguous()  # [B, HW, C], dense for proj_in (as above)
        x = self.proj_in(x)  # [B, HW, inner]
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = self.proj_out(x)  # [B, HW, C]
        return x.transpose(1, 2).reshape(b, -1, h, w) + x_in
