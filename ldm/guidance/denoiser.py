"""The guidance pass through the model's own denoising call.

A guidance method runs the UNet on the latent with gradients to read its attention maps. It does so through
``model.apply_model(z, t, cond, stop_after=...)``, the call the samplers use, so every conditioning the model takes
(a context, SDXL's vector ``y``, a concatenated image) reaches the UNet; a new model family needs no change here.
``stop_after`` stops the UNet after the named block (the last one whose maps the method reads): same maps, same
gradient, a fraction of the compute.

Unit tests and benchmarks may hand a bare ``UNetModel`` instead of a model; it is then called with the context
tensor (``unet(z, t, context=..., stop_after=...)``), as before the seam existed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["GuidanceDenoiser", "cross_attention_context"]


def cross_attention_context(cond: Any) -> torch.Tensor:
    """The cross-attention context ``[B, 77, D]`` from a tensor, a list of tensors or the ``c_crossattn`` dict."""
    if isinstance(cond, dict):
        cond = cond["c_crossattn"]
    if isinstance(cond, list):
        cond = torch.cat(cond, dim=1)
    return cond


class GuidanceDenoiser:
    """The denoiser a guidance method runs: ``(z, t, cond, stop_after) -> UNet output or hidden state``.

    ``unet`` is the UNet (``model.model.diffusion_model``) whose attention layers are captured and whose block names
    ``stop_after`` takes.
    """

    def __init__(self, model: nn.Module) -> None:
        if hasattr(model, "apply_model"):
            self.model: nn.Module | None = model
            self.unet = model.model.diffusion_model
        else:  # a bare UNet (unit tests, benchmarks)
            self.model = None
            self.unet = model

    def __call__(self, z: torch.Tensor, t: torch.Tensor, cond: Any, stop_after: str | None = None) -> torch.Tensor:
        if self.model is not None:
            return self.model.apply_model(z, t, cond, stop_after=stop_after)
        return self.unet(z, t, context=cross_attention_context(cond), stop_after=stop_after)
