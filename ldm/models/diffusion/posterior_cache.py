"""Cache of first-stage posteriors q(z | x) for textual inversion.

Inversion trains on a handful of images with a frozen autoencoder, so E(x) is the same at every step for a given
image and flip. Keeping each posterior's moments (mean, logvar) and drawing z = mean + std * eps each step gives the
same distribution as encoding every step (LDM Sec. 3, z ~ q(z | x)) without running the encoder again.

Batches must carry the keys the personalized datasets return: `image_path` (which file) and `flipped` (which twin).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

CACHE_BATCH_KEYS = ("image_path", "flipped")

CacheKey = tuple[str, bool, tuple[int, int]]


def batch_cache_keys(batch: dict, x: torch.Tensor) -> list[CacheKey] | None:
    """One key per sample (path, flipped, pixel size), or None when the batch cannot be cached."""
    if not all(k in batch for k in CACHE_BATCH_KEYS):
        return None
    paths: Sequence[str] = batch["image_path"]
    flips = batch["flipped"]
    flips = flips.tolist() if isinstance(flips, torch.Tensor) else list(flips)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    return [(str(p), bool(f), size) for p, f in zip(paths, flips, strict=True)]


class PosteriorCache:
    """Maps a cache key to the encoder moments `[2C, h, w]` (mean channels first, then logvar)."""

    def __init__(self) -> None:
        self._moments: dict[CacheKey, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._moments)

    def clear(self) -> None:
        self._moments.clear()

    def posterior(
        self,
        keys: Sequence[CacheKey],
        x: torch.Tensor,
        encode: Callable[[torch.Tensor], DiagonalGaussianDistribution],
    ) -> DiagonalGaussianDistribution:
        """The posterior of every image of `x` ([B, 3, H, W]); images not seen before are encoded once, together."""
        missing = [i for i, key in enumerate(keys) if key not in self._moments]
        if missing:
            with torch.no_grad():
                fresh = encode(x[missing]).parameters.detach()  # [M, 2C, h, w]
            for row, i in enumerate(missing):
                self._moments[keys[i]] = fresh[row]
        moments = torch.stack([self._moments[key].to(x.device) for key in keys])  # [B, 2C, h, w]
        return DiagonalGaussianDistribution(moments)

    def state(self) -> dict[str, Any]:
        """For inspection and tests: the number of entries and their keys."""
        return {"entries": len(self._moments), "keys": sorted(self._moments)}
