"""Compatibility location of the diffusion models: configs name `ldm.models.diffusion.ddpm.LatentDiffusion`."""

from ldm.models.diffusion.gaussian_diffusion import DDPM, DiffusionWrapper, disabled_train, freeze
from ldm.models.diffusion.latent_diffusion import LatentDiffusion

__all__ = ["DDPM", "DiffusionWrapper", "LatentDiffusion", "disabled_train", "freeze"]
