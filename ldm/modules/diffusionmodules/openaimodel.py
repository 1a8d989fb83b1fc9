"""The diffusion UNet of LDM / Stable Diffusion (after Dhariwal & Nichol 2021, "ADM", with the LDM cross-attention).

Constructor, module names and state_dict keys match CompVis latent-diffusion's ``UNetModel`` so released
text2img-large, SD v1 and SD 2.x checkpoints (``model.diffusion_model.*``; SD 2 adds
``use_linear_in_transformer``) load unchanged. Additions: ``use_sdpa`` (fused
attention for uncaptured layers), ``forward(..., stop_after=<block name>)`` to run only a prefix of the network, and
``attention_block_ds`` (block name -> downsampling factor of every block holding a ``SpatialTransformer``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ldm.modules.attention import CrossAttention, SpatialTransformer
from ldm.modules.diffusionmodules.unet_blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
)
from ldm.modules.diffusionmodules.util import conv_nd, linear, normalization, timestep_embedding, zero_module

logger = logging.getLogger(__name__)

# The building blocks live in unet_blocks.py; they stay importable from here.
__all__ = [
    "AttentionBlock",
    "Downsample",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
]


def _level_depths(transformer_depth: int | Sequence[int], levels: int) -> list[int]:
    """Transformer blocks per level (an int for every level, or one per level as SDXL's [0, 2, 10]); the middle block
    uses the last level's depth (as sgm)."""
    if isinstance(transformer_depth, int):
        return [transformer_depth] * levels
    depths = [int(d) for d in transformer_depth]
    if len(depths) != levels:
        raise ValueError(f"UNetModel: transformer_depth {depths} needs one depth per level of channel_mult ({levels})")
    return depths


class UNetModel(nn.Module):
    """The LDM denoiser ``eps_theta(x_t, t, c)`` (Rombach et al. 2022, eq. 2): an ADM UNet with cross-attention.

    Blocks (``ds`` starts at 1 and doubles at each downsample): ``input_blocks`` = conv_in, then per level
    ``num_res_blocks`` x (ResBlock [+ attention if ``ds in attention_resolutions``]) and a Downsample except at the last
    level; ``middle_block`` = ResBlock, attention, ResBlock; ``output_blocks`` = per level in reverse
    ``num_res_blocks + 1`` x (ResBlock on the skip concatenation [+ attention]) with an Upsample closing each level but
    the first. Attention is a ``SpatialTransformer`` when ``use_spatial_transformer`` else an ``AttentionBlock``.

    SDXL (sgm's ``UNetModel``, same keys): ``transformer_depth`` per level (``[0, 2, 10]``; the middle block takes the
    last), ``num_classes: sequential`` with ``adm_in_channels``: ``y`` ``[B, adm_in_channels]`` goes through
    ``label_emb`` (Linear, SiLU, Linear) and is added to the time embedding.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | str | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int | Sequence[int] = 1,
        context_dim: int | None = None,
        n_embed: int | None = None,
        legacy: bool = True,
        use_sdpa: bool = True,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
    ) -> None:
        super().__init__()
        depths = _level_depths(transformer_depth, len(channel_mult))
        if num_classes == "sequential" and adm_in_channels is None:
            raise ValueError("UNetModel: num_classes 'sequential' needs adm_in_channels (the width of the vector y)")
        if isinstance(num_classes, str) and num_classes != "sequential":
            raise ValueError(f"UNetModel: num_classes must be an int, 'sequential' or None, got {num_classes!r}")
        if use_spatial_transformer and context_dim is None:
            raise ValueError("UNetModel: use_spatial_transformer=True needs context_dim (the text embedding width)")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError("UNetModel: context_dim is set but use_spatial_transformer is False; set it to True")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("UNetModel: set num_heads or num_head_channels (both are -1)")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = list(attention_resolutions)
        self.channel_mult = list(channel_mult)
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.adm_in_channels = adm_in_channels
        self.transformer_depth = depths
        self.use_checkpoint = use_checkpoint
        # As the reference: use_fp16 names the compute dtype and converts no weights (convert_to_fp16 does).
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.predict_codebook_ids = n_embed is not None

        def attention(ch: int, block_heads: int, depth: int = depths[-1]) -> nn.Module:
            # Head rule of the original: a fixed head count, or a fixed head width; legacy configs mix the two.
            # ``block_heads`` (num_heads_upsample on the decoder side) only reaches AttentionBlock, as in the original.
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            dim_head = ch // heads if num_head_channels == -1 else num_head_channels
            if legacy:
                dim_head = ch // heads if use_spatial_transformer else num_head_channels
            if use_spatial_transformer:  # the original passes no dropout to the transformer
                return SpatialTransformer(
                    ch, heads, dim_head, depth=depth, context_dim=context_dim,
                    use_checkpoint=use_checkpoint, use_linear=use_linear_in_transformer,
                )  # fmt: skip
            return AttentionBlock(ch, block_heads, dim_head, use_checkpoint, use_new_attention_order)

        def resblock(ch: int, out_ch: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch, time_embed_dim, dropout, out_ch, dims=dims, use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm, **kw,
            )  # fmt: skip

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )
        if num_classes == "sequential":  # a conditioning vector y [B, adm_in_channels] (SDXL: pooled text + sizes)
            self.label_emb = nn.Sequential(
                nn.Sequential(
                    linear(adm_in_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
                )
            )
        elif num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        self.attention_block_ds: dict[str, int] = {}
        conv_in = conv_nd(dims, in_channels, model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_in)])
        skip_chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(attention(ch, num_heads, depths[level]))
                self._add(self.input_blocks, "input_blocks", layers, ds)
                skip_chans.append(ch)
            if level != len(self.channel_mult) - 1:
                down = resblock(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
                self._add(self.input_blocks, "input_blocks", [down], ds)
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), attention(ch, num_heads), resblock(ch, ch))
        if use_spatial_transformer and depths[-1] > 0:
            self.attention_block_ds["middle_block"] = ds

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample, depths[level]))
                block_ds = ds
                if level and i == num_res_blocks:
                    up = resblock(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, dims, ch)
                    layers.append(up)
                    ds //= 2
                self._add(self.output_blocks, "output_blocks", layers, block_ds)

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1))
        )
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(normalization(ch), conv_nd(dims, model_channels, n_embed, 1))
        for module in self.modules():
            if isinstance(module, CrossAttention):
                module.use_sdpa = use_sdpa

    def _add(self, blocks: nn.ModuleList, prefix: str, layers: list[nn.Module], ds: int) -> None:
        name = f"{prefix}.{len(blocks)}"
        if any(isinstance(layer, SpatialTransformer) and len(layer.transformer_blocks) for layer in layers):
            self.attention_block_ds[name] = ds
        blocks.append(TimestepEmbedSequential(*layers))

    @property
    def block_names(self) -> list[str]:
        """Names accepted by ``forward(stop_after=...)``, in execution order."""
        return (
            [f"input_blocks.{i}" for i in range(len(self.input_blocks))]
            + ["middle_block"]
            + [f"output_blocks.{i}" for i in range(len(self.output_blocks))]
        )

    @property
    def torso_dtype(self) -> torch.dtype:
        """The dtype the blocks run in: their weights' (``self.dtype`` once ``convert_to_fp16`` made it so).

        The released SD 2 configs say ``use_fp16: True`` but their weights load as float32; the reference relies on
        autocast there. Here such a model runs in float32 (and in float16 under autocast, or after convert_to_fp16).
        """
        return self.input_blocks[0][0].weight.dtype

    def convert_to_fp16(self) -> None:
        """Cast the torso (input, middle and output blocks) to float16."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.half()

    def convert_to_fp32(self) -> None:
        """Cast the torso back to float32."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.float()

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        stop_after: str | None = None,
    ) -> torch.Tensor:
        """Predict the noise for ``x`` ``[B, C, H, W]`` at ``timesteps`` ``[B]`` given ``context`` ``[B, M, D]``.

        With ``stop_after`` set to a block name (see ``block_names``) only the blocks up to and including it run and
        that block's output hidden state is returned.
        """
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("UNetModel: pass class labels y if and only if the model is class-conditional")
        if timesteps is None:
            raise ValueError("UNetModel.forward needs timesteps [B]")
        if stop_after is not None and stop_after not in self.block_names:
            valid = ", ".join(self.block_names)
            raise ValueError(f"UNetModel: unknown stop_after block {stop_after!r}; valid names: {valid}")
        # Half-precision weights (``--precision fp16/bf16``): inputs go in at the weights' dtype, the output leaves at
        # the input's dtype, so the sampler's latent arithmetic stays float32. ``use_fp16`` halves only the torso.
        torso_dtype = self.torso_dtype
        embed_dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(timesteps, self.model_channels).to(embed_dtype)  # [B, model_channels]
        emb = self.time_embed(t_emb)  # [B, 4*model_channels]
        if self.num_classes is not None:
            emb = emb + self.label_emb(y.to(embed_dtype) if y.is_floating_point() else y)  # [B, 4*model_channels]
        if context is not None and context.is_floating_point():
            context = context.to(torso_dtype)
        h = x.type(torso_dtype)
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if stop_after == f"input_blocks.{i}":
                return h
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if stop_after == "middle_block":
            return h
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
            if stop_after == f"output_blocks.{i}":
                return h
        head = self.id_predictor if self.predict_codebook_ids else self.out
        return head(h.type(head[-1].weight.dtype)).type(x.dtype)
