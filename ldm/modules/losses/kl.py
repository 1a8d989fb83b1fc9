"""A self-contained training loss for the KL autoencoder (no perceptual network, no discriminator).

The released LDM autoencoders were trained with LPIPS + a patch discriminator (``LPIPSWithDiscriminator``), which
needs downloaded VGG weights. This loss keeps the same call signature and the two terms that need nothing external:

    L = sum_pixels rec(x, x_hat) / B + kl_weight * sum_latent KL(q(z|x) || N(0, I)) / B

(the VAE evidence lower bound with a weighted KL term, Kingma & Welling 2014; LDM paper Sec. 3 / App. G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

REC_LOSSES = ("l1", "l2", "mse")


class KLReconstructionLoss(nn.Module):
    """Reconstruction (L1 or MSE) plus ``kl_weight`` times the KL to the standard-normal prior.

    Args:
        kl_weight: weight of the KL term (LDM's f=8 KL models used 1e-6).
        rec_loss: ``"l1"`` or ``"mse"`` (``"l2"`` is an alias).
    """

    def __init__(self, kl_weight: float = 1e-6, rec_loss: str = "l1") -> None:
        super().__init__()
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"lossconfig.params.rec_loss must be one of {REC_LOSSES}, got '{rec_loss}'")
        self.kl_weight = kl_weight
        self.rec_loss = rec_loss

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors: DiagonalGaussianDistribution,
        optimizer_idx: int = 0,
        global_step: int = 0,
        last_layer: torch.Tensor | None = None,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(loss, log)``; ``optimizer_idx``, ``global_step`` and ``last_layer`` are accepted for
        signature compatibility with the original discriminator loss and unused."""
        if self.rec_loss == "l1":
            rec = (inputs - reconstructions).abs()  # [B, C, H, W]
        else:
            rec = F.mse_loss(reconstructions, inputs, reduction="none")
        batch = inputs.shape[0]
        nll_loss = rec.sum() / batch
        kl_loss = posteriors.kl().sum() / batch
        loss = nll_loss + self.kl_weight * kl_loss
        log = {
            f"{split}/total_loss": loss.detach(),
            f"{split}/rec_loss": rec.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach(),
            f"{split}/kl_loss": kl_loss.detach(),
        }
        return loss, log
