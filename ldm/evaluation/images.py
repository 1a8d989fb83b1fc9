"""Reading and writing image folders for the evaluation scripts (PIL + numpy, no torchvision)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ldm.outputs import claim_numbered, image_writer

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name; hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def image_folder_files(folder: str | Path, flag: str) -> list[Path]:
    """Like :func:`list_images`, but a missing or image-less folder raises an error naming ``flag``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such folder")
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(
            f"{flag} {folder}: holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files directly inside it)"
        )
    return files


def load_image(path: str | Path, size: int | None = None) -> Tensor:
    """An RGB image as ``[3, H, W]`` float in [0, 1]; ``size`` resizes it to ``size x size`` with PIL bicubic."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size:
            img = img.resize((size, size), resample=Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # [3, H, W]


def load_images(paths: Sequence[str | Path], size: int | None = None) -> list[Tensor]:
    """:func:`load_image` over ``paths``."""
    return [load_image(p, size) for p in paths]


def save_images(images: Tensor, folder: str | Path, start: int = 0) -> list[Path]:
    """Write ``[N, 3, H, W]`` images in [0, 1] as ``folder/{i:04}.png`` from ``start``, each under the next number
    no file holds (claimed exclusively: another run's images are never replaced); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    arr = (images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    number = start
    for a in arr:
        write = image_writer(Image.fromarray(a), ".png")
        path, number = claim_numbered(lambda n: folder / f"{n:04}.png", write, number)
        paths.append(path)
        number += 1
    return paths
