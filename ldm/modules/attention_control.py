"""Attention capture outside the network (design seam 3).

``register_attention_controller(unet, controller)`` walks ``unet.named_modules()``, gives every ``CrossAttention`` a
``place`` label derived from its name (``input_blocks`` -> ``"down"``, ``middle_block`` -> ``"mid"``,
``output_blocks`` -> ``"up"``; diffusers' ``down_blocks``/``mid_block``/``up_blocks`` are understood too), its
``layer_name`` and the controller, and restores the previous attributes when the ``with`` block ends, also after an
exception. Nothing is threaded through ``forward()`` and nothing is monkey-patched.

``AttentionStore`` is the controller the guidance methods use: it keeps the cross-attention maps (and, when asked, the
self-attention maps) with a chosen number of query positions (``res * res``), on the compute device and inside the
autograd graph, until ``reset()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence

import torch
from torch import nn

from ldm.modules.attention import AttentionController, CrossAttention

__all__ = ["AttentionStore", "place_of", "register_attention_controller"]

_PLACE_PREFIXES = {
    "input_blocks": "down",
    "down_blocks": "down",
    "middle_block": "mid",
    "mid_block": "mid",
    "output_blocks": "up",
    "up_blocks": "up",
}


def place_of(module_name: str) -> str:
    """UNet place of a module from its dotted name: ``"down"``, ``"mid"`` or ``"up"``.

    Raises ``ValueError`` for a name outside the three parts of a UNet.
    """
    for part in module_name.split("."):
        if part in _PLACE_PREFIXES:
            return _PLACE_PREFIXES[part]
    raise ValueError(
        f"cannot tell the UNet place of module '{module_name}': expected a name containing one of "
        f"{sorted(_PLACE_PREFIXES)}"
    )


@contextlib.contextmanager
def register_attention_controller(
    unet: nn.Module, controller: AttentionController | None, layers: Collection[str] | None = None
) -> Iterator[int]:
    """Install ``controller`` on the ``CrossAttention`` layers of ``unet`` for the duration of a ``with`` block.

    Args:
        unet: the UNet (``model.model.diffusion_model``); module names are taken relative to it.
        controller: the controller to install (``None`` clears any controller for the block).
        layers: if given, only layers whose name starts with one of these prefixes get the controller; the others
            are left as they are. (Blocks that hold a captured layer do not use gradient checkpointing, so limiting
            the layers keeps checkpointing where nothing is captured.)
    Yields the number of layers the controller was installed on. On exit, also after an exception, each layer's
    previous ``controller``, ``place`` and ``layer_name`` are restored.
    """
    saved: list[tuple[CrossAttention, AttentionController | None, str, str]] = []
    try:
        for name, module in unet.named_modules():
            if not isinstance(module, CrossAttention):
                continue
            if layers is not None and not any(name == p or name.startswith(p + ".") for p in layers):
                continue
            saved.append((module, module.controller, module.place, module.layer_name))
            module.place = place_of(name)
            module.layer_name = name
            module.controller = controller
        yield len(saved)
    finally:
        for module, old_controller, old_place, old_name in saved:
            module.controller = old_controller
            module.place = old_place
            module.layer_name = old_name


class AttentionStore:
    """Keeps the attention probabilities of the layers with ``num_queries`` in ``resolutions`` (cross-attention) and
    in ``self_resolutions`` (self-attention; none by default).

    Maps are stored as given (``[B*heads, HW, 77]`` cross, ``[B*heads, HW, HW]`` self, on the device, with their
    autograd graph) under their place (``"down"``, ``"mid"``, ``"up"``) in call order. The store lives outside the
    network; call ``reset()`` before a forward whose maps you want. ``only_with_grad`` (the diffusers behaviour)
    ignores calls whose maps do not require grad, so a no-grad pass through a registered UNet stores nothing.
    """

    def __init__(
        self, resolutions: Collection[int], only_with_grad: bool = False, self_resolutions: Collection[int] = ()
    ) -> None:
        self.num_queries = {int(r) * int(r) for r in resolutions}
        self.self_num_queries = {int(r) * int(r) for r in self_resolutions}
        self.only_with_grad = only_with_grad
        self.reset()

    def reset(self) -> None:
        self.maps: dict[str, list[torch.Tensor]] = {"down": [], "mid": [], "up": []}
        self.self_maps: dict[str, list[torch.Tensor]] = {"down": [], "mid": [], "up": []}
        self.layer_names: list[str] = []

    def wants(self, is_cross: bool, place: str, layer_name: str, num_queries: int) -> bool:
        return num_queries in (self.num_queries if is_cross else self.self_num_queries)

    def __call__(self, probs: torch.Tensor, is_cross: bool, place: str, layer_name: str) -> None:
        if self.only_with_grad and not probs.requires_grad:
            return
        (self.maps if is_cross else self.self_maps)[place].append(probs)  # [B*heads, HW, 77 | HW]
        self.layer_names.append(layer_name)

    def __len__(self) -> int:
        return sum(len(v) for v in self.maps.values()) + sum(len(v) for v in self.self_maps.values())

    def aggregate(
        self, batch_size: int, res: int, is_cross: bool = True, places: Sequence[str] = ("up", "down", "mid")
    ) -> torch.Tensor:
        """Mean over heads and layers of the stored maps per sample, in float32: ``[B, res, res, N]`` (N = 77 text
        positions for cross-attention, ``res * res`` pixels for self-attention).

        The places are visited in the order ``up, down, mid`` as in the reference's ``aggregate_attention``.
        """
        stored = self.maps if is_cross else self.self_maps
        per_layer = []
        for place in places:
            for probs in stored[place]:
                if probs.shape[1] != res * res:
                    continue
                heads = probs.shape[0] // batch_size
                probs = probs.float()  # maps of a half-precision model are averaged in float32
                per_layer.append(probs.reshape(batch_size, heads, res, res, probs.shape[-1]))  # [B, h, r, r, N]
        if not per_layer:
            kind = "cross" if is_cross else "self"
            raise RuntimeError(
                f"AttentionStore holds no {kind}-attention maps at {res}x{res}: check attention_res against the "
                "UNet's attention resolutions and the latent size"
            )
        return torch.cat(per_layer, dim=1).mean(dim=1)  # [B, res, res, N]
