"""Textual-inversion style dataset: as the object dataset, with "a painting in the style of {}" captions."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ldm.data.personalized import PersonalizedImages
from ldm.data.templates import style_dual_templates_small, style_templates_small

STYLE_MIXING_PROB = 0.25  # fixed in the original style dataset


class PersonalizedBase(PersonalizedImages):
    """The style dataset of the original (`ldm.data.personalized_style.PersonalizedBase`); no `mixing_prob` or
    `coarse_class_text` arguments."""

    templates = style_templates_small
    dual_templates = style_dual_templates_small

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
        templates: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            data_root,
            size=size,
            repeats=repeats,
            interpolation=interpolation,
            flip_p=flip_p,
            set=set,
            placeholder_token=placeholder_token,
            per_image_tokens=per_image_tokens,
            center_crop=center_crop,
            mixing_prob=STYLE_MIXING_PROB,
            templates=templates,
        )
