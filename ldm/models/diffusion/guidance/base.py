"""The hook through which guidance methods edit the latent at the start of each sampling step."""

from __future__ import annotations

from typing import Protocol

import torch


class LatentGuidance(Protocol):
    """Called by every sampler at the start of each step, before the denoising pass.

    Args:
        x: the current latent z_t, [B, C, h, w].
        t: the timestep of this step for each sample, [B] (long).
        step: 0-based position in the run (0 is the first, noisiest step).
        num_steps: how many steps the run has.
        cond: the conditional context [B, 77, D] of the batch.
    Returns the latent to denoise (the same tensor when the method does nothing at this step). Implementations
    enable gradients themselves where they need them; samplers call them under `torch.no_grad()`.
    """

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: torch.Tensor
    ) -> torch.Tensor: ...
