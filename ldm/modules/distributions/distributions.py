"""Diagonal Gaussian posterior of the KL autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class DiagonalGaussianDistribution:
    """q(z|x) = N(mean, diag(exp(logvar))), parameterised by the encoder's moments.

    Args:
        parameters: ``[B, 2C, H, W]``; channels ``[:C]`` are the mean, ``[C:]`` the log-variance.
        deterministic: if True the distribution collapses to its mean (std = var = 0, KL = 0).
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # [B, C, H, W] each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw z = mean + std * eps, eps ~ N(0, I); ``generator`` makes it reproducible."""
        noise_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=noise_device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other) summed over C, H, W -> ``[B]``; ``other=None`` means the standard normal prior.

        KL(N(m1, v1) || N(m2, v2)) = 1/2 * sum((m1 - m2)^2 / v2 + v1 / v2 - 1 - log v1 + log v2).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        dims = [1, 2, 3]
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood -log q(sample), summed over ``dims``."""
        if self.deterministic:
            return torch.zeros(sample.shape[0], device=sample.device, dtype=sample.dtype)
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims))

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean."""
        return self.mean
