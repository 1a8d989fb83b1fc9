"""``--precision`` for sampling: full float32, autocast, or half-precision weights.

- ``full``: float32 weights and compute.
- ``autocast``: float32 weights; the networks run under ``torch.autocast`` (float16 on CUDA, bfloat16 on the CPU).
- ``fp16`` / ``bf16``: the frozen networks (UNet, autoencoder, text tower) are cast once, at load, to that dtype
  (half the memory). What stays float32: the schedule buffers, the textual-inversion vectors (cast to the token
  embeddings' dtype when spliced in), the sampler's latent arithmetic (the UNet casts its input to its own dtype and
  its output back to the input's dtype), and Attend-and-Excite's softmax, smoothing, loss and latent update (the
  captured maps are cast to float32 first; the gradient reaches the float32 latent through the cast).

Inversion (``main.py``) keeps Lightning's ``--precision bf16-mixed`` / ``16-mixed``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "weight_dtype", "autocast_dtype", "cast_model", "precision_scope", "model_dtype"]

PRECISIONS = ("full", "autocast", "fp16", "bf16")
_WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype the frozen networks hold for ``precision`` (float32 unless ``fp16``/``bf16``)."""
    _check(precision)
    return _WEIGHT_DTYPES.get(precision, torch.float32)


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast dtype of ``--precision autocast``: float16 on CUDA, bfloat16 elsewhere (the CPU)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def cast_model(model: nn.Module, precision: str) -> nn.Module:
    """Cast the frozen networks of a ``LatentDiffusion`` once for ``fp16``/``bf16`` (nothing for the other modes).

    The UNet wrapper (``model.model``), ``first_stage_model`` and ``cond_stage_model`` are cast; the model's own
    buffers (``alphas_cumprod`` ...), the EMA copy and the embedding manager stay float32.
    Raises ``ValueError`` for ``fp16`` on the CPU (half-precision CPU kernels are missing or slow; use ``bf16``).
    """
    dtype = weight_dtype(precision)
    if dtype == torch.float32:
        return model
    device = next(model.parameters()).device
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("--precision fp16 needs a CUDA device; on the CPU use --precision bf16")
    for name in ("model", "first_stage_model", "cond_stage_model"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            part.to(dtype)
    logger.info("Frozen networks cast to %s", dtype)
    return model


def model_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@contextlib.contextmanager
def precision_scope(device: torch.device | str, precision: str) -> Iterator[None]:
    """``torch.autocast`` for ``precision="autocast"`` (float16 on CUDA, bfloat16 on the CPU); nothing otherwise."""
    _check(precision)
    if precision != "autocast":
        yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=autocast_dtype(device)):
        yield
