"""Reading user image folders robustly: which files are images, and how any PIL mode becomes correct RGB."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

WHITE = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageFolderError(ValueError):
    """A data folder is missing, is not a folder, or holds no readable image."""


def list_images(folder: str | os.PathLike, flag: str = "data_root") -> list[Path]:
    """The files of `folder` (sorted by name) that PIL opens and decodes completely as images.

    Each file is decoded in full (PIL's `verify()` does not decode JPEG data, so a truncated JPEG would pass it and
    then stop training at its first batch). Entries that are not images (text files, sub-folders) are skipped with
    one warning naming them; an image that fails to decode is skipped with a warning naming it and the reason. A
    missing folder, or one with no image left, is an error that names the folder and the `flag` that set it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageFolderError(f"Image folder '{root}' ({flag}) does not exist or is not a folder.")
    images, not_images, undecodable = [], [], []
    for path in sorted(root.iterdir()):
        problem = _decode_problem(path) if path.is_file() else "a folder"
        if problem is None:
            images.append(path)
        elif problem in ("a folder", "not an image"):
            not_images.append(path.name + ("/" if path.is_dir() else ""))
        else:
            logger.warning("Skipping image '%s': it cannot be decoded (%s)", path, problem)
            undecodable.append(path.name)
    if not_images:
        names = ", ".join(not_images)
        logger.warning("Skipping %d entries of '%s' that are not images: %s", len(not_images), root, names)
    skipped = not_images + undecodable
    if not images:
        raise ImageFolderError(
            f"Image folder '{root}' ({flag}) contains no readable images"
            + (f" (skipped: {', '.join(skipped)})" if skipped else " (it is empty)")
            + ". Put your 3-5 training images (.jpg/.png/...) in it."
        )
    return images


def _decode_problem(path: Path) -> str | None:
    """None when PIL opens `path` and decodes all its pixel data; else why not ("not an image", or the error)."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes everything; a truncated or corrupt file raises here
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open `path` as 8-bit RGB, upright (EXIF orientation applied), whatever its mode."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    - 16-bit and 32-bit integer greyscale (`I;16*`, `I`) are scaled to 8 bit (PIL's own convert would clip them);
    - float greyscale (`F`) is read as [0, 1] when its maximum is at most 1, else as [0, 255];
    - transparency (RGBA, LA, palette with a transparent index) is composited onto white, not dropped;
    - palette, greyscale, CMYK, YCbCr and the rest go through PIL's conversion.
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image, dtype=np.float64)  # [H, W]
        if mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0  # 65535 -> 255
        return _grey_to_rgb(values)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        return _grey_to_rgb(values)
    if (mode == "P" and "transparency" in image.info) or mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGBA", image.size, (*WHITE, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)  # [H, W]
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
