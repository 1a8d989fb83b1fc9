"""Method-agnostic attention capture: which UNet blocks make maps of a given side, and the maps of one pass.

A method asks for a :class:`CaptureSpec`: cross-attention maps at some sides (A&E: 16, i.e. 16x16 maps) and
self-attention maps at some sides (INITNO's conflict term). :func:`capture_plan` names the UNet blocks that make them
at a latent size and the block after which a guidance pass can stop; :class:`CapturedMaps` holds one pass's maps,
averaged over heads and layers per sample (places visited up, down, mid, as the A&E reference aggregates them).
Registering and storing is ``ldm.modules.attention_control`` (the controller seam of the attention layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ldm.modules.attention_control import AttentionStore

__all__ = ["CaptureSpec", "CapturePlan", "CapturedMaps", "blocks_at_resolution", "capture_plan", "new_store"]


@dataclass(frozen=True)
class CaptureSpec:
    """The maps a method reads: cross-attention at ``cross`` sides, self-attention at ``self_attention`` sides."""

    cross: tuple[int, ...] = ()
    self_attention: tuple[int, ...] = ()

    @property
    def sides(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.cross) | set(self.self_attention), reverse=True))


@dataclass(frozen=True)
class CapturePlan:
    """The blocks to capture (registered layer prefixes) and the block after which the guidance pass may stop."""

    layers: tuple[str, ...]
    stop_after: str


def blocks_at_resolution(unet: nn.Module, latent_hw: tuple[int, int], res: int) -> list[str]:
    """Names of the UNet blocks whose attention maps are ``res x res`` for a latent of ``latent_hw``, in order."""
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


def capture_plan(unet: nn.Module, latent_hw: tuple[int, int], spec: CaptureSpec) -> CapturePlan:
    """The blocks making the maps of ``spec`` at this latent size, and the last of them (where a pass may stop)."""
    blocks = {name for side in spec.sides for name in blocks_at_resolution(unet, latent_hw, side)}
    ordered = sorted(blocks, key=unet.block_names.index)
    return CapturePlan(tuple(ordered), ordered[-1])


def new_store(spec: CaptureSpec) -> AttentionStore:
    """An attention store that keeps exactly the maps of ``spec``."""
    return AttentionStore(spec.cross, self_resolutions=spec.self_attention)


@dataclass
class CapturedMaps:
    """The maps of one guidance pass over ``batch`` samples, aggregated once per kind and side.

    ``cross[res]``: ``[b, r, r, 77]``; ``self_attention[res]``: ``[b, r, r, r*r]`` (float32, in the autograd graph).
    """

    cross: dict[int, torch.Tensor] = field(default_factory=dict)
    self_attention: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def collect(cls, store: AttentionStore, spec: CaptureSpec, batch: int) -> CapturedMaps:
        return cls(
            {r: store.aggregate(batch, r) for r in spec.cross},
            {r: store.aggregate(batch, r, is_cross=False) for r in spec.self_attention},
        )

    def rows(self, rows: list[int]) -> CapturedMaps:
        """The maps averaged over the samples ``rows`` (one row: that sample's maps): ``[r, r, N]`` per side."""
        return CapturedMaps(
            {r: m[rows].mean(dim=0) for r, m in self.cross.items()},
            {r: m[rows].mean(dim=0) for r, m in self.self_attention.items()},
        )
