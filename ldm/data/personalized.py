"""Textual-inversion object dataset (Gal et al. 2022, Sec. 4): a few images of a concept, captioned by templates.

Each item is ``{"image": [H, W, 3] float32 in [-1, 1], "caption": str, "image_index": int, "flipped": bool,
"image_path": str}``. ``image_path`` and ``flipped`` identify the exact pixels (resize and crop are deterministic),
so the model may cache the first-stage posterior per (image, flip) pair.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.image_io import list_images, load_rgb
from ldm.data.personalized_tokens import per_img_token_list
from ldm.data.templates import imagenet_dual_templates_small, imagenet_templates_small

logger = logging.getLogger(__name__)

INTERPOLATIONS = {
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


class PersonalizedImages(Dataset):
    """Shared machinery of the object and style datasets; subclasses choose templates and captions.

    Args:
        data_root: folder of training images (non-images, and images that fail to decode, are skipped with a
            warning naming them; no image left is an error naming the folder).
        size: output side in pixels (images are resized to size x size; None keeps them as they are).
        repeats: the training set is `repeats` passes over the images (`set == "train"` only).
        interpolation: linear | bilinear | bicubic | lanczos | nearest.
        flip_p: probability of a horizontal flip.
        set: "train", or anything else for one pass (validation).
        placeholder_token: the string that stands for the concept in captions (`--placeholder_string`).
        per_image_tokens: with probability `mixing_prob`, also name the image's own token (Hebrew letters).
        center_crop: crop the centre square before resizing (else non-square images are squashed).
        mixing_prob: probability of a dual template when `per_image_tokens`.
        templates: caption templates with one ``{}`` for the placeholder, replacing the class's list (e.g. captions
            in a small model's own vocabulary, as ``configs/toyworld/finetune.yaml`` does). None keeps the original.
    """

    templates: list[str] = imagenet_templates_small
    dual_templates: list[str] = imagenet_dual_templates_small

    def __init__(
        self,
        data_root: str | os.PathLike,
        size: int | None = None,
        repeats: int = 100,
        interpolation: str = "bicubic",
        flip_p: float = 0.5,
        set: str = "train",  # noqa: A002 - the original config key
        placeholder_token: str = "*",
        per_image_tokens: bool = False,
        center_crop: bool = False,
        mixing_prob: float = 0.25,
        templates: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if templates is not None:
            templates = [str(t) for t in templates]
            bad = [t for t in templates if t.count("{}") != 1]
            if not templates or bad:
                raise ValueError(
                    f"templates: each caption template needs exactly one '{{}}' for the placeholder; got {bad or '[]'}"
                )
            self.templates = templates
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation '{interpolation}' is not one of {sorted(INTERPOLATIONS)}")
        self.data_root = str(data_root)
        self.image_paths = [str(p) for p in list_images(data_root, flag="--data_root / data_root")]
        self.num_images = len(self.image_paths)
        if per_image_tokens and self.num_images >= len(per_img_token_list):
            raise ValueError(
                f"per_image_tokens supports fewer than {len(per_img_token_list)} images; '{data_root}' has "
                f"{self.num_images}. Use fewer images or per_image_tokens: false."
            )
        self._length = self.num_images * repeats if set == "train" else self.num_images
        self.size = size
        self.interpolation = INTERPOLATIONS[interpolation]
        self.flip_p = flip_p
        self.placeholder_token = placeholder_token
        self.per_image_tokens = per_image_tokens
        self.center_crop = center_crop
        self.mixing_prob = mixing_prob
        self._pixels: dict[int, np.ndarray] = {}  # decoded once per worker: index -> [H, W, 3] uint8

    def __len__(self) -> int:
        return self._length

    def placeholder_text(self) -> str:
        return self.placeholder_token

    def caption(self, index: int) -> str:
        placeholder = self.placeholder_text()
        if self.per_image_tokens and np.random.uniform() < self.mixing_prob:
            return random.choice(self.dual_templates).format(placeholder, per_img_token_list[index])
        return random.choice(self.templates).format(placeholder)

    def pixels(self, index: int) -> np.ndarray:
        """The resized uint8 RGB pixels of image `index` ([H, W, 3]); deterministic, so decoded once."""
        if index not in self._pixels:
            image = load_rgb(self.image_paths[index])
            if self.center_crop:
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                image = image.crop((left, top, left + side, top + side))
            if self.size is not None:
                image = image.resize((self.size, self.size), resample=self.interpolation)
            self._pixels[index] = np.asarray(image, dtype=np.uint8)
        return self._pixels[index]

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = i % self.num_images
        pixels = self.pixels(index)
        flipped = random.random() < self.flip_p
        if flipped:
            pixels = pixels[:, ::-1]
        image = (pixels.astype(np.float32) / 127.5 - 1.0).copy()  # [H, W, 3] in [-1, 1]
        return {
            "image": image,
            "caption": self.caption(index),
            "image_index": index,
            "flipped": flipped,
            "image_path": self.image_paths[index],
        }


class PersonalizedBase(PersonalizedImages):
    """The object dataset of the original (`ldm.data.personalized.PersonalizedBase`).

    `coarse_class_text` prefixes the placeholder ("dog *"); see `PersonalizedImages` for the other arguments.
    """

    def __init__(self, data_root: str | os.PathLike, *args: Any, coarse_class_text: str | None = None, **kwargs: Any):
        super().__init__(data_root, *args, **kwargs)
        self.coarse_class_text = coarse_class_text

    def placeholder_text(self) -> str:
        if self.coarse_class_text:
            return f"{self.coarse_class_text} {self.placeholder_token}"
        return self.placeholder_token
