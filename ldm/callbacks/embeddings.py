"""Writes the textual-inversion embeddings next to the checkpoints (Gal et al. 2022 keep only v*).

- at every checkpoint: `checkpoints/embeddings.pt` (overwritten: the latest) and `checkpoints/embeddings_gs-<step>.pt`,
  each with a `.safetensors` twin; files are written to a temporary name and renamed (`EmbeddingManager.save` writes
  through `ldm.outputs.atomic_write`), so a crash never leaves half a file. A step's file is never replaced: a resumed
  run that reaches a step again writes `embeddings_gs-<step>-0001.pt` (claimed exclusively, `ldm.outputs.save_record`);
- at the end of training, and on an exception or Ctrl-C during training: `embeddings.pt` (+ `.safetensors`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ldm.outputs import atomic_write, record_number, save_record, write_error

logger = logging.getLogger(__name__)


def atomic_save(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` for a temporary file in the same folder, then rename it to `path` (umask permissions)."""
    atomic_write(path, write)


class EmbeddingWriter(pl.Callback):
    """Saves `pl_module.embedding_manager` (if any) in the original format plus safetensors (rank 0 only)."""

    def __init__(self, ckptdir: str | os.PathLike, safetensors: bool = True) -> None:
        super().__init__()
        self.ckptdir = Path(ckptdir)
        self.safetensors = safetensors
        self.started = False  # set once training has begun (after any checkpoint restore)

    def write(self, pl_module: pl.LightningModule, global_step: int | None = None) -> list[Path]:
        """Write `embeddings.pt` (and `embeddings_gs-<global_step>.pt` when a step is given); return the paths."""
        manager = getattr(pl_module, "embedding_manager", None)
        if manager is None:
            return []
        suffixes = [".pt"] + ([".safetensors"] if self.safetensors else [])
        written = []
        for suffix in suffixes:  # the latest, replaced at every save
            path = self.ckptdir / f"embeddings{suffix}"
            manager.save(path)  # atomic, umask permissions; the format follows the suffix
            written.append(path)
        if global_step is not None:  # the step's own files: never replaced, the twin numbered like the .pt
            number = 0
            for suffix in suffixes:
                name = self.ckptdir / f"embeddings_gs-{global_step}{suffix}"
                path = save_record(manager.save, name, number=number)
                number = number or record_number(path, name)
                written.append(path)
        return written

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]):
        if trainer.is_global_zero:
            self.write(pl_module, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # not before training has started: a failed resume must not overwrite the run's embeddings
        if not trainer.is_global_zero or not self.started:
            return
        try:
            paths = self.write(pl_module)
            if paths:
                logger.warning("Training stopped by %s; wrote %s", type(exception).__name__, paths[0])
        except Exception as err:
            written = write_error(err, self.ckptdir)
            if written is None:  # a bug: its traceback
                logger.exception("Could not write the embeddings after %s", type(exception).__name__)
            else:  # a full disk, a read-only folder: one line (the run's own error follows)
                logger.warning("Could not write the embeddings after %s: %s", type(exception).__name__, written)
