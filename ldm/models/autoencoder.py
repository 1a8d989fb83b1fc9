"""KL-regularised autoencoder, the first stage of latent diffusion (Rombach et al. 2022, Sec. 3.1)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

logger = logging.getLogger(__name__)

LDM_PREFIX = "first_stage_model."


class AutoencoderKL(pl.LightningModule):
    """Encoder -> ``quant_conv`` -> q(z|x) = N(mean, diag(var)); z -> ``post_quant_conv`` -> Decoder.

    Args:
        ddconfig: Encoder/Decoder parameters (``ch``, ``ch_mult``, ``z_channels``, ``double_z`` must be true, ...).
        lossconfig: ``{target, params}`` of the training loss; ``torch.nn.Identity`` for inference-only models.
        embed_dim: latent channels.
        ckpt_path: optional weights (``.ckpt``/``.safetensors``; a full LDM checkpoint's ``first_stage_model.*``
            entries are used when the file holds those).
        ignore_keys: key prefixes to drop from ``ckpt_path``.
        image_key: batch key of the ``[B, H, W, C]`` images in [-1, 1].
        colorize_nlabels: for segmentation inputs, number of label channels to map to RGB in ``log_images``.
        monitor: metric name for checkpointing callbacks.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Mapping[str, Any],
        embed_dim: int,
        ckpt_path: str | os.PathLike | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
    ) -> None:
        super().__init__()
        from ldm.util import instantiate_from_config

        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder must output mean and logvar)")
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        self.embed_dim = embed_dim
        if colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor
        if ckpt_path:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def init_from_ckpt(self, path: str | os.PathLike, ignore_keys: Sequence[str] = ()) -> None:
        from ldm.util import load_state_dict_file

        state_dict = load_state_dict_file(path)
        own = set(self.state_dict())
        if not own & set(state_dict) and any(k.startswith(LDM_PREFIX) for k in state_dict):
            state_dict = {k[len(LDM_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(LDM_PREFIX)}
        state_dict = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in ignore_keys)}
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        logger.info(
            "Restored AutoencoderKL from %s (%d missing, %d unexpected keys)", path, len(missing), len(unexpected)
        )
        if missing:
            logger.warning("Keys missing from %s: %s", path, missing[:10])
        if unexpected:
            logger.warning("Unexpected keys in %s: %s", path, unexpected[:10])

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Image ``[B, 3, H, W]`` in [-1, 1] -> posterior over ``[B, embed_dim, H/f, W/f]``."""
        x = x.to(self.quant_conv.weight.dtype)  # half-precision weights (--precision fp16/bf16) take half inputs
        moments = self.quant_conv(self.encoder(x))  # [B, 2*embed_dim, H/f, W/f]
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, embed_dim, h, w]`` -> image ``[B, 3, h*f, w*f]`` (not clamped)."""
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))  # in the weights' dtype

    def forward(
        self, input: torch.Tensor, sample_posterior: bool = True
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def get_input(self, batch: Mapping[str, torch.Tensor], k: str) -> torch.Tensor:
        """``batch[k]`` as ``[B, H, W, C]`` (or ``[B, H, W]``) float in [-1, 1] -> ``[B, C, H, W]`` float."""
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def _loss_step(self, batch: Mapping[str, torch.Tensor], split: str) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(self.loss, nn.Identity):
            raise RuntimeError(
                "AutoencoderKL was built with lossconfig.target torch.nn.Identity (inference only); set "
                "lossconfig.target to ldm.modules.losses.KLReconstructionLoss to train it."
            )
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)
        return self.loss(
            inputs, reconstructions, posterior, 0, self.global_step, last_layer=self.get_last_layer(), split=split
        )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, log = self._loss_step(batch, "train")
        self.log("aeloss", loss, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log_dict(log, prog_bar=False, logger=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        loss, log = self._loss_step(batch, "val")
        self.log("val/rec_loss", log["val/rec_loss"])
        self.log_dict(log)
        return log

    def configure_optimizers(self) -> torch.optim.Optimizer:
        lr = getattr(self, "learning_rate", None)
        if lr is None:
            raise AttributeError(
                "AutoencoderKL.learning_rate is not set; main.py sets it from model.base_learning_rate "
                "(set model.learning_rate before training)."
            )
        params = [
            *self.encoder.parameters(),
            *self.decoder.parameters(),
            *self.quant_conv.parameters(),
            *self.post_quant_conv.parameters(),
            *self.loss.parameters(),
        ]
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))

    @torch.no_grad()
    def log_images(
        self, batch: Mapping[str, torch.Tensor], only_inputs: bool = False, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """``inputs``, ``reconstructions`` and ``samples`` (decoded N(0, I) latents), all ``[B, 3, H, W]``."""
        log: dict[str, torch.Tensor] = {}
        x = self.get_input(batch, self.image_key).to(self.device)
        if not only_inputs:
            xrec, posterior = self(x)
            if x.shape[1] > 3:
                xrec = self.to_rgb(xrec)
                x = self.to_rgb(x)
            log["samples"] = self.decode(torch.randn_like(posterior.mean))
            log["reconstructions"] = xrec
        elif x.shape[1] > 3:
            x = self.to_rgb(x)
        log["inputs"] = x
        return log

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``[B, nlabels, H, W]`` segmentation maps to RGB in [-1, 1] with a fixed random 1x1 conv."""
        if not hasattr(self, "colorize"):
            raise ValueError("to_rgb needs colorize_nlabels in the AutoencoderKL params")
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0


class IdentityFirstStage(nn.Module):
    """A first stage that does nothing (diffusion directly in pixel space)."""

    def __init__(self, *args: Any, vq_interface: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x
