"""CLIP text tower (Radford et al. 2021) with the state_dict layout of Stable Diffusion v1 checkpoints.

Stable Diffusion stores its text encoder as ``cond_stage_model.transformer.text_model.*`` (the transformers 4.x
``CLIPTextModel`` layout). transformers 5 dropped the ``text_model`` level, so the tower is owned here: token and
position embeddings, pre-LayerNorm blocks with causal self-attention and a quick-GELU MLP, a final LayerNorm.
Only the tokenizer comes from transformers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_position_embeddings, hidden_size)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, N, D]`` (possibly edited by textual inversion) + positions 0..N-1."""
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        return inputs_embeds + self.position_embedding(positions)[None]  # [B, N, D]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with biased Q, K, V and output projections."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, -1).transpose(1, 2)  # [B, heads, N, d_head]

        q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # token i attends to j <= i
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act '{hidden_act}' is not one of {sorted(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[hidden_act]
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """x = x + Attn(LN1(x)); x = x + MLP(LN2(x))."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, num_heads: int, layer_norm_eps: float, hidden_act: str
    ) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, num_heads)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, hidden_act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, layers: list[CLIPEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, num_layers: int | None = None) -> torch.Tensor:
        """The output of the first ``num_layers`` layers (all of them by default)."""
        for layer in self.layers[:num_layers]:
            x = layer(x)
        return x


class CLIPTextTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        intermediate_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        max_position_embeddings: int,
        layer_norm_eps: float,
        hidden_act: str,
    ) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_position_embeddings)
        self.encoder = CLIPEncoder(
            [
                CLIPEncoderLayer(hidden_size, intermediate_size, num_attention_heads, layer_norm_eps, hidden_act)
                for _ in range(num_hidden_layers)
            ]
        )
        self.final_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, inputs_embeds: torch.Tensor, hidden_layer: int | None = None) -> torch.Tensor:
        """The last hidden state after ``final_layer_norm``; or with ``hidden_layer`` i the output of encoder layer i
        (transformers' ``hidden_states[i]``: 0 is the embeddings), without the final LayerNorm."""
        x = self.embeddings(inputs_embeds)
        if hidden_layer is not None:
            return self.encoder(x, num_layers=hidden_layer)
        return self.final_layer_norm(self.encoder(x))


class CLIPTextTower(nn.Module):
    """The CLIP text encoder; defaults are CLIP ViT-L/14's (SD v1). Keys: ``text_model.*``."""

    def __init__(
        self,
        vocab_size: int = 49408,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        max_position_embeddings: int = 77,
        layer_norm_eps: float = 1e-5,
        hidden_act: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.text_model = CLIPTextTransformer(
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            max_position_embeddings,
            layer_norm_eps,
            hidden_act,
        )

    @property
    def num_layers(self) -> int:
        return len(self.text_model.encoder.layers)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        hidden_layer: int | None = None,
    ) -> torch.Tensor:
        """Last hidden state ``[B, N, D]`` for token ids ``[B, N]`` or for token embeddings ``[B, N, D]``
        (before the position embedding, which is added here); ``hidden_layer`` i: the output of layer i instead,
        without the final LayerNorm (SDXL uses layer 11 of CLIP ViT-L's 12)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        if inputs_embeds.shape[1] > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {inputs_embeds.shape[1]} exceeds max_position_embeddings "
                f"{self.max_position_embeddings}"
            )
        return self.text_model(inputs_embeds, hidden_layer=hidden_layer)
