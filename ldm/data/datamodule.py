"""`DataModuleFromConfig`: the original's data section (`data.params.{train,validation,test,predict}`) as a
Lightning 2 `LightningDataModule`. `main.DataModuleFromConfig` is this class."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test", "predict")


class WrappedDataset(Dataset):
    """Wraps any object with `__len__` and `__getitem__` into a torch Dataset (`wrap: true`)."""

    def __init__(self, dataset: Any) -> None:
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> Any:
        return self.data[idx]


def worker_init_fn(worker_id: int) -> None:
    """Give every dataloader worker its own numpy seed (torch seeds Python's `random` per worker already)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed + worker_id)


class DataModuleFromConfig(pl.LightningDataModule):
    """Datasets built from configs, one per split; loaders only for the splits that are given.

    Args:
        batch_size: batch size of every loader.
        train, validation, test, predict: dataset configs (`target` + `params`) or None.
        wrap: wrap each dataset in `WrappedDataset`.
        num_workers: loader workers (default: 2 x batch_size, as the original).
        shuffle_test_loader, shuffle_val_dataloader: shuffle those loaders.
        use_worker_init_fn: seed numpy per worker.
    """

    def __init__(
        self,
        batch_size: int,
        train: Any = None,
        validation: Any = None,
        test: Any = None,
        predict: Any = None,
        wrap: bool = False,
        num_workers: int | None = None,
        shuffle_test_loader: bool = False,
        use_worker_init_fn: bool = False,
        shuffle_val_dataloader: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers if num_workers is not None else batch_size * 2
        self.use_worker_init_fn = use_worker_init_fn
        self.wrap = wrap
        self.shuffle = {"train": True, "validation": shuffle_val_dataloader, "test": shuffle_test_loader}
        self.dataset_configs = {
            name: cfg for name, cfg in zip(SPLITS, (train, validation, test, predict), strict=True) if cfg is not None
        }
        self.datasets: dict[str, Dataset] = {}
        # Lightning runs a loop only when its hook exists, so hooks of absent splits are hidden (as the original).
        for name, hook in (
            ("validation", "val_dataloader"),
            ("test", "test_dataloader"),
            ("predict", "predict_dataloader"),
        ):
            if name not in self.dataset_configs:
                setattr(self, hook, None)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name, cfg in self.dataset_configs.items():
            dataset = instantiate_from_config(cfg)
            self.datasets[name] = WrappedDataset(dataset) if self.wrap else dataset
            logger.info("%s: %s, %d items", name, type(dataset).__name__, len(self.datasets[name]))

    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            self.setup()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=self.shuffle.get(split, False),
            worker_init_fn=worker_init_fn if self.use_worker_init_fn else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
