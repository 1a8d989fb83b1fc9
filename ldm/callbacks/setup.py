"""Run-folder setup: `logs/<run>/{checkpoints,configs,images}` and the merged configs written at fit start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from ldm.outputs import save_record, write_error

logger = logging.getLogger(__name__)


class SetupCallback(pl.Callback):
    """Creates the run folders and writes `configs/<now>-project.yaml` and `configs/<now>-lightning.yaml` (rank 0).

    On an exception or Ctrl-C during training it saves `checkpoints/last.ckpt` (single-process runs: a DDP save
    would wait for ranks that may be gone).
    """

    def __init__(
        self,
        resume: bool,
        now: str,
        logdir: str | Path,
        ckptdir: str | Path,
        cfgdir: str | Path,
        config: DictConfig,
        lightning_config: DictConfig,
    ) -> None:
        super().__init__()
        self.resume = resume
        self.now = now
        self.logdir, self.ckptdir, self.cfgdir = Path(logdir), Path(ckptdir), Path(cfgdir)
        self.config = config
        self.lightning_config = lightning_config
        self.started = False  # set once training has begun (after any checkpoint restore)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        for folder in (self.logdir, self.ckptdir, self.cfgdir, self.logdir / "images"):
            folder.mkdir(parents=True, exist_ok=True)
        lightning = OmegaConf.create({"lightning": self.lightning_config})
        for config, name in ((self.config, "project"), (lightning, "lightning")):  # a rerun's: -0001 ...
            save_record(lambda tmp, c=config: OmegaConf.save(c, tmp), self.cfgdir / f"{self.now}-{name}.yaml")
        logger.info("Run folder %s (configs in %s)", self.logdir, self.cfgdir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Before training starts (e.g. a failed resume) the model holds no trained state: saving it would overwrite
        # the run's real last.ckpt with untrained weights.
        if not self.started or trainer.world_size > 1:
            return
        path = self.ckptdir / "last.ckpt"
        try:
            self.ckptdir.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(path))
            logger.warning("Training stopped by %s; saved %s", type(exception).__name__, path)
        except Exception as err:  # the original exception matters more; report ours and carry on
            written = write_error(err, path)
            if written is None:  # a bug: its traceback
                logger.exception("Could not save %s after %s", path, type(exception).__name__)
            else:  # a full disk, a read-only folder: one line (the run's own error follows)
                logger.warning("Could not save %s after %s: %s", path, type(exception).__name__, written)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save `last.ckpt` at the final step if no checkpoint was taken there (e.g. max_steps between saves)."""
        callback = trainer.checkpoint_callback
        last_step = getattr(callback, "_last_global_step_saved", None) if callback is not None else None
        if trainer.global_step > 0 and last_step != trainer.global_step:
            trainer.save_checkpoint(str(self.ckptdir / "last.ckpt"))


def config_summary(config: Any) -> str:
    """The config as YAML, for logs."""
    return OmegaConf.to_yaml(config)
