"""ImageLogger: writes `pl_module.log_images(batch)` grids to `<logdir>/images/<split>/` (and TensorBoard if used).

File names as the original: `<key>_gs-<global_step:06>_e-<epoch:06>_b-<batch_idx:06>.jpg`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from ldm.outputs import image_writer, save_record

logger = logging.getLogger(__name__)


def make_grid(images: torch.Tensor, nrow: int = 4, padding: int = 2) -> torch.Tensor:
    """`[N, C, H, W]` -> one `[C, rows*(H+p)+p, nrow*(W+p)+p]` image, row-major, zero padding (as torchvision)."""
    n, c, h, w = images.shape
    if c == 1:
        images, c = images.repeat(1, 3, 1, 1), 3
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(n):
        top = (i // cols) * (h + padding) + padding
        left = (i % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


class ImageLogger(pl.Callback):
    """Logs image grids every `batch_frequency` steps (and at powers of two before, if `increase_log_steps`).

    Args:
        batch_frequency: log when `step % batch_frequency == 0` (step = global step, or batch index if
            `log_on_batch_idx`).
        max_images: at most this many images per key.
        clamp: clamp to [-1, 1] before saving.
        increase_log_steps: also log at steps 1, 2, 4, ... below `batch_frequency`.
        rescale: map [-1, 1] to [0, 1] before saving.
        disabled: log nothing.
        log_on_batch_idx: count batches instead of optimiser steps.
        log_first_step: also log at step 0.
        log_images_kwargs: passed to `pl_module.log_images` (e.g. `ddim_steps`, `N`).
    """

    def __init__(
        self,
        batch_frequency: int,
        max_images: int,
        clamp: bool = True,
        increase_log_steps: bool = True,
        rescale: bool = True,
        disabled: bool = False,
        log_on_batch_idx: bool = False,
        log_first_step: bool = False,
        log_images_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = batch_frequency
        self.max_images = max_images
        self.clamp = clamp
        self.rescale = rescale
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.logdir: Path | None = None  # main.py sets the run folder; else trainer.default_root_dir
        self.log_steps = [2**n for n in range(int(np.log2(batch_frequency)) + 1)] if increase_log_steps else []
        self.log_steps = [s for s in self.log_steps if s != batch_frequency] + [batch_frequency]

    def check_frequency(self, check_idx: int) -> bool:
        if check_idx == 0 and not self.log_first_step:
            return False
        if check_idx % self.batch_freq == 0 or check_idx in self.log_steps:
            if check_idx in self.log_steps and check_idx != self.batch_freq:
                self.log_steps.remove(check_idx)
            return True
        return False

    def save_local(
        self, root: Path, split: str, images: dict[str, torch.Tensor], step: int, epoch: int, batch_idx: int
    ):
        folder = root / "images" / split
        for key, value in images.items():
            grid = make_grid(value, nrow=4)  # [C, H, W]
            if self.rescale:
                grid = (grid + 1.0) / 2.0
            array = (grid.permute(1, 2, 0).numpy().clip(0, 1) * 255).astype(np.uint8)
            name = f"{key}_gs-{step:06}_e-{epoch:06}_b-{batch_idx:06}.jpg"
            path = folder / name  # a rerun's image of the same step: <name>-0001.jpg (the earlier one stays)
            save_record(image_writer(Image.fromarray(array), path), path)  # atomic, umask permissions

    @torch.no_grad()
    def log_img(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str):
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if self.disabled or not callable(getattr(pl_module, "log_images", None)) or not self.check_frequency(check_idx):
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            images = pl_module.log_images(batch, **self.log_images_kwargs)
        finally:
            pl_module.train(was_training)
        prepared = {}
        for key, value in images.items():
            if not isinstance(value, torch.Tensor):
                continue
            value = value[: self.max_images].detach().float().cpu()
            prepared[key] = value.clamp(-1.0, 1.0) if self.clamp else value
        if trainer.is_global_zero:
            root = self.logdir if self.logdir is not None else Path(trainer.default_root_dir)
            self.save_local(root, split, prepared, pl_module.global_step, pl_module.current_epoch, batch_idx)
            self._log_to_tensorboard(trainer, split, prepared, pl_module.global_step)

    @staticmethod
    def _log_to_tensorboard(trainer: pl.Trainer, split: str, images: dict[str, torch.Tensor], step: int) -> None:
        for lg in trainer.loggers:
            experiment = getattr(lg, "experiment", None)
            if experiment is None or not hasattr(experiment, "add_image"):
                continue
            for key, value in images.items():
                grid = make_grid(value, nrow=4)
                experiment.add_image(f"{split}/{key}", ((grid + 1.0) / 2.0).clamp(0, 1), global_step=step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ):
        if pl_module.global_step > 0:
            self.log_img(trainer, pl_module, batch, batch_idx, split="val")
