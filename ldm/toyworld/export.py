"""Trained ToyWorld checkpoints -> the state dicts of the shipped fp16 ``.safetensors`` files
(scripts/export_toyworld.py writes them).

``autoencoder_state``: the AutoencoderKL state dict without the training loss (``loss.*``).
``ldm_state``: the full LatentDiffusion state dict (UNet, text encoder, first stage, ``scale_factor``); the UNet weights
are the EMA weights when the run kept an EMA (``model_ema.*``), and no ``model_ema.*`` entries are kept, so the file
loads with ``use_ema: false`` (configs/toyworld/txt2img-inference.yaml).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def autoencoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the loss module's entries (the inference config uses ``torch.nn.Identity``)."""
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def ldm_state(state: dict[str, torch.Tensor], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Swap the EMA shadow weights into ``model.*`` (LitEma names a parameter by its path with dots removed)."""
    out = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
    ema = {k[len("model_ema.") :]: v for k, v in state.items() if k.startswith("model_ema.")}
    ema.pop("decay", None)
    ema.pop("num_updates", None)
    if use_ema and ema:
        swapped = 0
        for key in list(out):
            if key.startswith("model."):
                shadow = key[len("model.") :].replace(".", "")
                if shadow in ema:
                    out[key] = ema[shadow]
                    swapped += 1
        logger.info("Used the EMA weights for %d UNet tensors", swapped)
        if swapped == 0:
            raise ValueError("the checkpoint has model_ema.* entries but none matches a model.* parameter")
    out = {k: v for k, v in out.items() if not k.startswith("first_stage_model.loss.")}
    return out


def to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors to fp16 (contiguous, as safetensors needs); integer buffers unchanged."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
