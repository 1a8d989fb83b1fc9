"""SDXL's conditioning (Podell et al. 2023, "SDXL", sec. 2.1-2.2): two text towers and size/crop conditioning.

Written from the paper and checked against Stability-AI/generative-models (``sgm``) on tiny random models
(``tests/fixtures/sdxl/``). The state-dict layout is sgm's ``GeneralConditioner`` (``conditioner.embedders.N``):

- ``embedders.0``: CLIP ViT-L/14 (:class:`FrozenCLIPEmbedder`, ``layer: hidden``, ``layer_idx: 11``): the output of
  block 11 of 12, without the final LayerNorm, ``[B, 77, 768]``;
- ``embedders.1``: OpenCLIP ViT-bigG/14 (:class:`FrozenOpenCLIPEmbedder`, ``layer: penultimate``, ``legacy: False``,
  ``always_return_pooled: True``): the penultimate block's output without ``ln_final``, ``[B, 77, 1280]``, and the
  pooled text feature ``ln_final(last)[EOT] @ text_projection``, ``[B, 1280]``;
- ``embedders.2..4``: the original size, the crop's top-left corner and the target size, each ``(h, w)`` pair
  turned into two 256-wide sinusoidal embeddings (the timestep embedding of each number), ``[B, 512]`` each.

Outputs: context = the two towers' hidden states concatenated on the channel axis ``[B, 77, 2048]``;
y = pooled ++ original ++ crop ++ target ``[B, 2816]`` (the UNet's ``adm_in_channels``). The conditioning handed to
``apply_model`` is ``{"c_crossattn": [context], "c_adm": [y]}``: every entry a list of batch-first tensors, so CFG can
concatenate it and guidance can select per-sample rows.

Textual inversion: one placeholder has one vector per tower; the embedding manager holds them side by side,
``[num_vectors, 768 + 1280]`` (:attr:`tower_widths` says where the split is), and each tower gets its own part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ldm.modules.diffusionmodules.util import timestep_embedding
from ldm.modules.encoders.base import TokenSplice
from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from ldm.modules.encoders.openclip import FrozenOpenCLIPEmbedder

TOWER_NAMES = ("clip_l", "clip_g")  # the keys of the tools' shared SDXL embedding files
SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")  # sgm's batch keys


class SizeEmbedder(nn.Module):
    """sgm's ``ConcatTimestepEmbedderND``: every number of ``x`` ``[B, d]`` -> a ``dim``-wide sinusoidal embedding,
    concatenated: ``[B, d * dim]``. No parameters."""

    def __init__(self, outdim: int = 256) -> None:
        super().__init__()
        self.outdim = outdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None] if x.ndim == 1 else x  # [B, d]
        b, d = x.shape
        return timestep_embedding(x.reshape(b * d), self.outdim).reshape(b, d * self.outdim)  # [B, d * outdim]


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning (paper sec. 2.2), per sample or for all, as ``(height, width)`` / ``(top, left)``.

    ``original_size`` None and ``target_size`` None mean the image size being sampled; ``crop_top_left`` (0, 0) is
    "not cropped" (sgm's defaults, and the flags ``--original_size``, ``--crop_top_left``, ``--target_size``).
    """

    original_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None
    crop_top_left: tuple[int, int] | Sequence[tuple[int, int]] = (0, 0)
    target_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None

    def tensors(self, n: int, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """sgm's batch entries: ``{key: float [n, 2]}`` for the three sizes."""
        values = (self.original_size or image_hw, self.crop_top_left, self.target_size or image_hw)
        out = {}
        for key, value in zip(SIZE_KEYS, values, strict=True):
            t = torch.tensor(value, dtype=torch.float32)
            out[key] = (t[None].repeat(n, 1) if t.ndim == 1 else t).reshape(n, 2)
        return out


class SDXLConditioner(nn.Module):
    """The two towers and the size embedders (module docstring); the text-encoder API of the other encoders
    (``tokenizer``, ``tokenize``, ``token_embedding``, ``single_token_id``, ``embedding_dim``, ``encode``).

    Args:
        clip_l: parameters of the first tower's :class:`FrozenCLIPEmbedder` (its layer defaults to hidden 11).
        clip_g: parameters of the second tower's :class:`FrozenOpenCLIPEmbedder` (defaults: penultimate,
            legacy False, pooled output).
        size_embedding_dim: width of each size number's embedding (256).
        image_size: the image side sampled when no size is given (the model's native size).
    """

    tower_names = TOWER_NAMES
    # SDXL base's towers (sgm's sd_xl_base.yaml); a config's clip_l / clip_g entries override them
    CLIP_L_DEFAULTS = {"layer": "hidden", "layer_idx": 11}
    CLIP_G_DEFAULTS = {
        "arch": "ViT-bigG-14", "version": None, "width": 1280, "layers": 32, "heads": 20, "embed_dim": 1280,
        "layer": "penultimate", "legacy": False, "always_return_pooled": True,
    }  # fmt: skip

    def __init__(
        self,
        clip_l: dict[str, Any] | None = None,
        clip_g: dict[str, Any] | None = None,
        size_embedding_dim: int = 256,
        image_size: int = 1024,
    ) -> None:
        super().__init__()
        clip_l = {**self.CLIP_L_DEFAULTS, **dict(clip_l or {})}
        clip_g = {**self.CLIP_G_DEFAULTS, **dict(clip_g or {})}
        if clip_g["legacy"] or not clip_g["always_return_pooled"]:
            raise ValueError("SDXLConditioner: clip_g needs legacy: False and always_return_pooled: True")
        self.embedders = nn.ModuleList(
            [FrozenCLIPEmbedder(**clip_l), FrozenOpenCLIPEmbedder(**clip_g)]
            + [SizeEmbedder(size_embedding_dim) for _ in SIZE_KEYS]
        )
        self.image_size = image_size
        self.max_length = self.towers[0].max_length

    # --- the text-encoder API ----------------------------------------------------------------------------------
    @property
    def towers(self) -> tuple[FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder]:
        return self.embedders[0], self.embedders[1]

    @property
    def tower_widths(self) -> tuple[int, int]:
        return tuple(t.embedding_dim for t in self.towers)

    @property
    def embedding_dim(self) -> int:
        """Width of a placeholder's stored vector: both towers' widths side by side."""
        return sum(self.tower_widths)

    @property
    def tokenizer(self) -> Any:
        """CLIP-L's tokenizer (the towers share the BPE vocabulary and positions; only the padding id differs)."""
        return self.towers[0].tokenizer

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.towers[0].tokenize(texts)  # [B, 77]

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Both towers' raw token embeddings side by side ``[..., D_l + D_g]``."""
        return torch.cat([t.token_embedding(ids) for t in self.towers], dim=-1)

    def single_token_id(self, word: str) -> int:
        ids = {t.single_token_id(word) for t in self.towers}
        if len(ids) != 1:
            raise ValueError(f"'{word}' has different token ids in SDXL's two tokenizers ({sorted(ids)})")
        return ids.pop()

    def freeze(self) -> None:
        self.eval()
        for param in self.parameters():
            param.requires_grad = False

    # --- conditioning ------------------------------------------------------------------------------------------
    def _tower_states(
        self, texts: list[str], embedding_manager: TokenSplice | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h_l [B, 77, D_l], h_g [B, 77, D_g], pooled [B, P])``; each tower gets its part of the placeholder
        vectors (the manager splices into the side-by-side embedding; the other part is zeros and dropped)."""
        clip_l, clip_g = self.towers
        d_l, d_g = self.tower_widths
        ids_l = clip_l.tokenize(texts)  # [B, 77], padded with the end token
        ids_g = clip_g.tokenize(texts)  # [B, 77], padded with 0
        emb_l, emb_g = clip_l.token_embedding(ids_l), clip_g.token_embedding(ids_g)  # [B, 77, D]
        if embedding_manager is not None:
            zeros_g = emb_l.new_zeros((*emb_l.shape[:-1], d_g))
            ids_l, emb_l = embedding_manager(ids_l, torch.cat([emb_l, zeros_g], dim=-1))
            emb_l = emb_l[..., :d_l]
            zeros_l = emb_g.new_zeros((*emb_g.shape[:-1], d_l))
            ids_g, emb_g = embedding_manager(ids_g, torch.cat([zeros_l, emb_g], dim=-1))
            emb_g = emb_g[..., d_l:]
        h_l = clip_l.transformer(inputs_embeds=emb_l, hidden_layer=clip_l.layer_idx)  # [B, 77, D_l]
        h_g, pooled = clip_g.encode_with_pooled(ids_g, emb_g)  # [B, 77, D_g], [B, P]
        return h_l, h_g, pooled

    def encode(
        self,
        texts: str | Sequence[str],
        embedding_manager: TokenSplice | None = None,
        size: SizeConditioning | None = None,
        image_hw: tuple[int, int] | None = None,
        zero_text: bool = False,
    ) -> dict[str, list[torch.Tensor]]:
        """Prompts -> ``{"c_crossattn": [context [B, 77, D_l + D_g]], "c_adm": [y [B, P + 6 * 256]]}``.

        ``size``: the micro-conditioning (default: ``image_hw``, else the native size, not cropped).
        ``zero_text``: the text parts (context and pooled) are zeros: sgm's unconditional input when there is no
        negative prompt (``force_uc_zero_embeddings=["txt"]``; diffusers' ``force_zeros_for_empty_prompt``).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        h_l, h_g, pooled = self._tower_states(texts, embedding_manager)
        context = torch.cat([h_l, h_g], dim=-1)  # [B, 77, D_l + D_g]
        if zero_text:
            context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
        image_hw = image_hw or (self.image_size, self.image_size)
        sizes = (size or SizeConditioning()).tensors(len(texts), image_hw)
        device = pooled.device
        parts = [pooled] + [e(sizes[k].to(device)) for e, k in zip(self.embedders[2:], SIZE_KEYS, strict=True)]
        y = torch.cat([p.to(pooled.dtype) for p in parts], dim=-1)  # [B, P + 3 * 2 * size_embedding_dim]
        return {"c_crossattn": [context], "c_adm": [y]}

    def forward(self, texts: str | Sequence[str], embedding_manager: TokenSplice | None = None) -> dict:
        return self.encode(texts, embedding_manager=embedding_manager)
