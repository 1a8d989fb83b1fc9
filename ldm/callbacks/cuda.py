"""Peak GPU memory and epoch time, logged per training epoch; `main.py` adds it only when CUDA is present."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch

logger = logging.getLogger(__name__)


class CUDACallback(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type != "cuda":
            return
        torch.cuda.reset_peak_memory_stats(pl_module.device)
        torch.cuda.synchronize(pl_module.device)
        self.start_time = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type != "cuda" or not hasattr(self, "start_time"):
            return
        torch.cuda.synchronize(pl_module.device)
        epoch_time = time.time() - self.start_time
        peak_mib = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        epoch_time = float(trainer.strategy.reduce(torch.tensor(epoch_time, device=pl_module.device)))
        peak_mib = float(trainer.strategy.reduce(torch.tensor(peak_mib, device=pl_module.device)))
        if trainer.is_global_zero:
            logger.info("Average epoch time: %.2f s; average peak memory %.2f MiB", epoch_time, peak_mib)
        for lg in trainer.loggers:
            lg.log_metrics(
                {"cuda/epoch_time_s": epoch_time, "cuda/peak_memory_mib": peak_mib}, step=trainer.global_step
            )
