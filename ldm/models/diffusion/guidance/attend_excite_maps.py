"""The cross-attention maps Attend-and-Excite reads, and its loss on them (the method is in ``attend_and_excite.py``).

From one aggregated map ``[r, r, 77]``: the softmax over the kept text positions, the reference Gaussian smoothing,
each token's maximum m_k and the loss L = max_k max(0, 1 - m_k) (eq. 3). :func:`blocks_at_resolution` names the UNet
blocks whose maps are ``r x r``; :func:`capture_token_maps` runs one truncated pass to show the maps (explorer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig, TokenGroup, normalize_token_indices
from ldm.models.diffusion.guidance.smoothing import smooth_maps
from ldm.modules.attention_control import AttentionStore, register_attention_controller


def token_attention_maps(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """The (smoothed) attention map of every position in ``groups`` from one map ``[res, res, 77]``: ``[P, r, r]``.

    Softmax of ``softmax_scale * maps`` over the positions ``[1:end]`` (end = -1, or the end-of-text position),
    then the reference Gaussian per position.
    """
    end = -1 if config.softmax_end == "last" or eot_position is None else eot_position
    maps = maps.float()  # half-precision models: the softmax, smoothing and loss run in float32
    attn = torch.softmax(maps[:, :, 1:end] * config.softmax_scale, dim=-1)  # [r, r, n_kept]
    positions = [p - 1 for group in groups for p in group]
    selected = attn[:, :, positions].permute(2, 0, 1)  # [P, r, r]
    if config.smooth_attentions:
        selected = smooth_maps(selected, config.kernel_size, config.sigma)
    return selected


def max_attention_per_token(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """Per-token score m_k ``[K]``: the spatial max of each position's smoothed map, max over a group's positions."""
    per_position = token_attention_maps(maps, groups, config, eot_position).flatten(1).max(dim=1).values  # [P]
    scores, start = [], 0
    for group in groups:
        scores.append(per_position[start : start + len(group)].max())
        start += len(group)
    return torch.stack(scores)  # [K]


def attend_excite_loss(scores: torch.Tensor) -> torch.Tensor:
    """L = max_k max(0, 1 - m_k) (eq. 3)."""
    return (1.0 - scores).max().clamp_min(0.0)


def blocks_at_resolution(unet: nn.Module, latent_hw: tuple[int, int], res: int) -> list[str]:
    """Names of the UNet blocks whose cross-attention maps are ``res x res`` for a latent of ``latent_hw``."""
    h, w = latent_hw
    names = [name for name, ds in unet.attention_block_ds.items() if h // ds == res and w // ds == res]
    if not names:
        if h != w:
            raise ValueError(f"Attend-and-Excite needs square attention maps; the latent is {h}x{w} (use --H == --W)")
        # only sides the UNet really makes: a latent side that its downsampling does not divide makes none valid
        bottom = 2 ** (len(unet.channel_mult) - 1)
        sides = sorted({h // ds for ds in unet.attention_block_ds.values()}, reverse=True) if h % bottom == 0 else []
        hint = (
            f"set --ae_attention_res to one of {sides}" if sides else f"the latent side must be a multiple of {bottom}"
        )
        raise ValueError(
            f"attention_res {res}: no cross-attention layer makes {res}x{res} maps for a {h}x{w} latent; {hint}"
        )
    order = unet.block_names
    return sorted(names, key=order.index)


def cross_attention_context(cond: Any) -> torch.Tensor:
    """The cross-attention context ``[B, 77, D]`` from a tensor, a list of tensors or the ``c_crossattn`` dict."""
    if isinstance(cond, dict):
        cond = cond["c_crossattn"]
    if isinstance(cond, list):
        cond = torch.cat(cond, dim=1)
    return cond


def group_token_maps(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """Each token group's smoothed map from one map ``[r, r, 77]``: ``[K, r, r]``, the max over a group's positions
    (the spatial max of a group's map is its score m_k)."""
    per_position = token_attention_maps(maps, groups, config, eot_position)  # [P, r, r]
    sizes = [len(g) for g in groups]
    return torch.stack([part.max(dim=0).values for part in per_position.split(sizes)])  # [K, r, r]


@dataclass
class StepMaps:
    """What ``AttendAndExcite(on_maps=...)`` hands over at one step."""

    step: int  # 0-based step of the run
    num_steps: int
    t: int  # the timestep of the step
    maps: dict[int, torch.Tensor]  # sample -> smoothed token-group maps [K, r, r] (CPU) at the latent entering the step
    guided: bool  # True: from the step's guidance pass; False: from a capture-only pass (a step without guidance)


@torch.no_grad()
def capture_token_maps(
    unet: nn.Module,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    token_indices: Sequence[Sequence[int | Sequence[int]]],
    config: AttendExciteConfig,
    eot_positions: Sequence[int | None] | None = None,
) -> list[torch.Tensor]:
    """The maps the loss looks at, for display: per sample ``[K, r, r]`` on the CPU (see :func:`group_token_maps`).

    One conditional pass (stopped after the last block at ``attention_res``) over ``z`` ``[B, C, h, w]`` at ``t``;
    ``eot_positions`` (per sample) matter only with ``softmax_end="eot"``.
    """
    context = cross_attention_context(cond)
    capture = blocks_at_resolution(unet, tuple(z.shape[-2:]), config.attention_res)
    store = AttentionStore([config.attention_res])
    with register_attention_controller(unet, store, layers=capture):
        unet(z, t, context=context, stop_after=capture[-1])
    maps = store.aggregate(z.shape[0], config.attention_res)  # [B, r, r, 77]
    eots = list(eot_positions) if eot_positions is not None else [None] * z.shape[0]
    return [
        group_token_maps(maps[b], normalize_token_indices(indices), config, eots[b]).cpu()
        for b, indices in enumerate(token_indices)
    ]
