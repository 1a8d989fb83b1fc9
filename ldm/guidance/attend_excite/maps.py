"""The cross-attention maps Attend-and-Excite reads, and its loss on them (the method is in ``method.py``).

From one aggregated map ``[r, r, 77]``: the softmax over the kept text positions, the reference Gaussian smoothing,
each token's maximum m_k and the loss L = max_k max(0, 1 - m_k) (eq. 3). :func:`capture_token_maps` runs one
truncated pass to show the maps (explorer, ``--save_attention``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ldm.guidance.attend_excite.config import AttendExciteConfig, TokenGroup, normalize_token_indices
from ldm.guidance.capture import CaptureSpec, capture_plan, new_store
from ldm.guidance.denoiser import GuidanceDenoiser
from ldm.guidance.smoothing import smooth_maps
from ldm.modules.attention_control import register_attention_controller


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


def group_token_maps(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """Each token group's smoothed map from one map ``[r, r, 77]``: ``[K, r, r]``, the max over a group's positions
    (the spatial max of a group's map is its score m_k)."""
    per_position = token_attention_maps(maps, groups, config, eot_position)  # [P, r, r]
    sizes = [len(g) for g in groups]
    return torch.stack([part.max(dim=0).values for part in per_position.split(sizes)])  # [K, r, r]


@torch.no_grad()
def capture_token_maps(
    model: Any,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    token_indices: Sequence[Sequence[int | Sequence[int]]],
    config: AttendExciteConfig,
    eot_positions: Sequence[int | None] | None = None,
) -> list[torch.Tensor]:
    """The maps the loss looks at, for display: per sample ``[K, r, r]`` on the CPU (see :func:`group_token_maps`).

    One conditional pass (stopped after the last block at ``attention_res``) over ``z`` ``[B, C, h, w]`` at ``t``,
    through ``model``'s own denoising call (or a bare UNet's); ``eot_positions`` (per sample) matter only with
    ``softmax_end="eot"``.
    """
    denoiser = GuidanceDenoiser(model)
    spec = CaptureSpec(cross=(config.attention_res,))
    plan = capture_plan(denoiser.unet, tuple(z.shape[-2:]), spec)
    store = new_store(spec)
    with register_attention_controller(denoiser.unet, store, layers=plan.layers):
        denoiser(z, t, cond, plan.stop_after)
    maps = store.aggregate(z.shape[0], config.attention_res)  # [B, r, r, 77]
    eots = list(eot_positions) if eot_positions is not None else [None] * z.shape[0]
    return [
        group_token_maps(maps[b], normalize_token_indices(indices), config, eots[b]).cpu()
        for b, indices in enumerate(token_indices)
    ]
