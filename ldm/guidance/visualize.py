"""Attention maps over the generated image, one labelled tile per excited token (``--save_attention``).

Each map is upsampled bilinearly to the image size, min-max normalised, coloured with a jet colour map and blended
with the image; the token is written under the tile with PIL's default font (A&E ``vis_utils.show_image_relevance``
and ``text_under_image``, without OpenCV).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 20


def jet(values: np.ndarray) -> np.ndarray:
    """Jet colour map of values in [0, 1]: ``[..., 3]`` uint8 (blue for 0, red for 1)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    channels = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)  # r, g, b
    return (channels * 255).round().astype(np.uint8)


def overlay(image: Image.Image, attention: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """Blend the jet-coloured, normalised ``attention`` ``[r, r]`` (upsampled to the image) with ``image``."""
    w, h = image.size
    amap = torch.nn.functional.interpolate(attention[None, None].float().cpu(), size=(h, w), mode="bilinear")[0, 0]
    amap = (amap - amap.min()) / (amap.max() - amap.min()).clamp_min(1e-12)
    heat = jet(amap.numpy()).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((alpha * heat + (1 - alpha) * base).round().astype(np.uint8))


def render_attention(image: Image.Image, maps: torch.Tensor, labels: Sequence[str]) -> Image.Image:
    """The image followed by one overlay per token map ``[K, r, r]``, each labelled under it: one PIL image."""
    if len(labels) != maps.shape[0]:
        raise ValueError(f"render_attention: {maps.shape[0]} maps but {len(labels)} labels")
    w, h = image.size
    tiles = [image.convert("RGB")] + [overlay(image, m) for m in maps]
    sheet = Image.new("RGB", (w * len(tiles), h + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (tile, label) in enumerate(zip(tiles, ["image", *labels])):
        sheet.paste(tile, (k * w, 0))
        text_w = draw.textlength(label, font=font)
        draw.text((k * w + max(0.0, (w - text_w) / 2), h + 4), label, fill="black", font=font)
    return sheet
