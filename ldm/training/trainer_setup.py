"""The Lightning parts of a ``main.py`` run: the learning rate (scaled by the original rule), the logger, the
default callbacks merged with the config's, and the SIGUSR1 handler that saves ``last.ckpt``."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.callbacks import CUDACallback, EmbeddingWriter, ImageLogger, SetupCallback

logger = logging.getLogger(__name__)


def device_count(options: dict[str, Any]) -> int:
    """How many devices the trainer ``options`` train on (all visible GPUs for ``accelerator: gpu`` without a count)."""
    devices = options.get("devices", 1)
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if options.get("accelerator") in ("gpu", "cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def scale_learning_rate(model: Any, config: DictConfig, options: dict[str, Any], scale: bool) -> None:
    """The original rule: lr = accumulate x n_devices x batch_size x base_lr (x num_nodes, 1 unless multi-node)."""
    base_lr = float(config.model.get("base_learning_rate", 1.0e-4))
    if not scale:
        model.learning_rate = base_lr
        logger.info("Not scaling the learning rate: %.2e", base_lr)
        return
    batch_size = int(config.data.params.batch_size)
    accumulate = int(options.get("accumulate_grad_batches", 1) or 1)
    n_devices = device_count(options)
    nodes = int(options.get("num_nodes", 1) or 1)
    model.learning_rate = accumulate * n_devices * nodes * batch_size * base_lr
    logger.info(
        "learning rate %.2e = %d (accumulate) x %d (devices) x %d (nodes) x %d (batch) x %.2e (base)",
        model.learning_rate, accumulate, n_devices, nodes, batch_size, base_lr,
    )  # fmt: skip


def make_logger(kind: str, logdir: Path) -> Any:
    """The Lightning logger of ``--logger`` (``auto``: TensorBoard when installed, else CSV) under ``logdir``."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    if kind == "auto":
        kind = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "csv"
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=str(logdir), name="tensorboard")
    return CSVLogger(save_dir=str(logdir), name="csv")


def make_callbacks(
    lightning_config: DictConfig, model: Any, logdir: Path, ckptdir: Path, cfgdir: Path, setup_kwargs: dict[str, Any]
) -> list[Any]:
    """Default callbacks (original names and settings), with `lightning.callbacks` / `modelcheckpoint` merged on top."""
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from ldm.util import instantiate_from_config

    ckpt_params: dict[str, Any] = {
        "dirpath": str(ckptdir),
        "filename": "{epoch:06}",
        "verbose": True,
        "save_last": True,
        # overwrite last.ckpt (also when SetupCallback wrote it) instead of adding last-v1.ckpt, last-v2.ckpt, ...
        "enable_version_counter": False,
    }
    if getattr(model, "monitor", None) and getattr(model, "embedding_manager", None) is None:
        ckpt_params.update(monitor=model.monitor, save_top_k=1)  # inversion runs log no EMA metric to monitor
    user_ckpt = lightning_config.get("modelcheckpoint", {}) or {}
    ckpt_params.update(OmegaConf.to_container(user_ckpt.get("params", OmegaConf.create()), resolve=True))
    callbacks_cfg = OmegaConf.merge(
        {
            "image_logger": {
                "target": "main.ImageLogger",
                "params": {"batch_frequency": 750, "max_images": 4, "clamp": True},
            }
        },
        lightning_config.get("callbacks", OmegaConf.create()) or {},
    )
    callbacks = [
        SetupCallback(ckptdir=ckptdir, cfgdir=cfgdir, logdir=logdir, **setup_kwargs),
        EmbeddingWriter(ckptdir),
        ModelCheckpoint(**ckpt_params),
        LearningRateMonitor(logging_interval="step"),
    ]
    for name, cfg in callbacks_cfg.items():
        if cfg is None or cfg.get("target") is None:
            continue
        callback = instantiate_from_config(cfg)
        if isinstance(callback, ImageLogger):
            callback.logdir = logdir
        logger.info("callback %s: %s", name, type(callback).__name__)
        callbacks.append(callback)
    if torch.cuda.is_available():
        callbacks.append(CUDACallback())
    return callbacks


def install_checkpoint_signal(trainer: Any, ckptdir: Path) -> None:
    """SIGUSR1 saves `checkpoints/last.ckpt` (and the embeddings, through the model's checkpoint hook), as before."""
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return

    def save_last(*_: Any) -> None:
        if trainer.global_rank == 0:
            logger.info("SIGUSR1: saving %s", ckptdir / "last.ckpt")
            trainer.save_checkpoint(str(ckptdir / "last.ckpt"))

    signal.signal(signal.SIGUSR1, save_last)
