"""Helpers shared by the textual-inversion tests: tiny generated training images and the tiny run's arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import GOLDEN_WEIGHTS, REPO
from PIL import Image

TINY_LDM = str(REPO / "configs" / "tests" / "golden_tiny_ldm.yaml")
TINY_SD = str(REPO / "configs" / "tests" / "golden_tiny_sd.yaml")
INVERSION_TINY = str(REPO / "configs" / "tests" / "inversion_tiny.yaml")


def make_images(folder: Path, count: int = 3, size: tuple[int, int] = (64, 80)) -> Path:
    """`count` RGB PNGs of a coloured box on white (width x height = size)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.full((size[1], size[0], 3), 255, np.uint8)
        pixels[8 + 4 * i : size[1] - 8, 8 : size[0] - 8 - 4 * i] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def inversion_argv(data_root: Path, logdir: Path, family: str = "ldm", *extra: str) -> list[str]:
    base = TINY_LDM if family == "ldm" else TINY_SD
    return [
        "-t",
        "--base", base, INVERSION_TINY,
        "--actual_resume", str(GOLDEN_WEIGHTS[family]),
        "--data_root", str(data_root),
        "--init_word", "sculpture",
        "-l", str(logdir),
        "--logger", "csv",
        *extra,
    ]  # fmt: skip
