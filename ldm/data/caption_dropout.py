"""Caption dropout for classifier-free guidance training.

Classifier-free guidance (Ho & Salimans 2022) needs a model that also predicts eps(x_t, t, c=""): during training a
share ``p`` of the captions is replaced by the empty prompt, so the sampler's unconditional branch
(``get_learned_conditioning([""])``) is a condition the model has seen. Which items are dropped is a pure function
of ``(seed, index)``, so a dataset stays deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


class CaptionDropout(Dataset):
    """Wrap a dataset (given as a ``{target, params}`` config or an instance) and blank a share of its captions.

    Args:
        dataset: the inner dataset's config (``target`` + ``params``) or a dataset object.
        p: probability that an item's caption is replaced by ``empty``.
        seed: seed of the per-item drop decision.
        key: the caption key of the items.
        empty: the replacement caption (the sampler's unconditional prompt).
    """

    def __init__(
        self, dataset: Mapping[str, Any] | Dataset, p: float = 0.1, seed: int = 0, key: str = "caption", empty: str = ""
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"CaptionDropout.p must be in [0, 1], got {p}")
        if isinstance(dataset, Mapping):
            from ldm.util import instantiate_from_config

            dataset = instantiate_from_config(dataset)
        self.dataset = dataset
        self.p, self.seed, self.key, self.empty = float(p), int(seed), key, empty

    def __len__(self) -> int:
        return len(self.dataset)

    def dropped(self, i: int) -> bool:
        """Whether item ``i`` gets the empty caption."""
        return bool(np.random.default_rng([self.seed, int(i), 7]).random() < self.p)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        if self.key not in item:
            raise KeyError(f"CaptionDropout: items of {type(self.dataset).__name__} have no {self.key!r} key")
        if self.dropped(i if i >= 0 else i + len(self)):
            item[self.key] = self.empty
        return item
