"""The output folder of one ``--prompt`` sampling run (scripts/txt2img.py, scripts/stable_txt2img.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from ldm.outputs.files import (
    OutputError,
    atomic_write,
    claim_numbered,
    ensure_folder,
    image_writer,
    inside,
    json_text,
    next_index,
    safe_stem,
    save_image,
    save_json,
    text_writer,
)

__all__ = ["RunFolder"]

logger = logging.getLogger(__name__)


class RunFolder:
    """The output folder of one sampling run: ``samples/``, grids, ``attention/`` and ``settings-NNNN.json``.

    Every path it hands out is inside ``root``; every write is atomic, and every numbered file is claimed
    exclusively (:func:`claim_numbered`), so two runs writing into one folder at once never overwrite each other and
    a rerun keeps the earlier record. ``layout`` ``"sd"`` numbers samples with five digits and grids
    ``<stem>-NNNN.png``; ``"ldm"`` (the LDM script's original layout) uses four-digit samples and ``<stem>.png``
    grids, with ``-NNNN`` added when that name is taken.
    """

    def __init__(self, root: str | os.PathLike, layout: str = "sd") -> None:
        if layout not in ("sd", "ldm"):
            raise ValueError(f"unknown output layout {layout!r}; use 'sd' or 'ldm'")
        self.root = Path(root).absolute()  # relative paths handed out below are not re-joined to root
        self.layout = layout
        self.samples = self.root / "samples"
        self.attention = self.root / "attention"
        self._digits = 5 if layout == "sd" else 4
        self.run_index = next_index(self.root, "settings-", ".json")

    def prepare(self) -> None:
        ensure_folder(self.root, "--outdir")
        try:
            self.samples.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"--outdir {self.root}: cannot create the output folder ({err.strerror})") from err

    def next_sample_index(self) -> int:
        return max(next_index(self.samples, "", ".png"), next_index(self.attention, "", ".png"))

    def sample_path(self, index: int) -> Path:
        return inside(self.root, self.samples / f"{index:0{self._digits}d}.png")

    def attention_path(self, index: int) -> Path:
        return inside(self.root, self.attention / f"{index:0{self._digits}d}.png")

    def grid_path(self, prompt: str) -> Path:
        """Where the next grid of ``prompt`` would go (:meth:`save_grid` claims it)."""
        stem = safe_stem(prompt)
        if self.layout == "ldm" and not (self.root / f"{stem}.png").exists():
            return inside(self.root, f"{stem}.png")
        return inside(self.root, f"{stem}-{next_index(self.root, stem + '-', '.png'):04d}.png")

    def settings_path(self) -> Path:
        """Where the next ``settings-NNNN.json`` would go (:meth:`save_settings` claims it)."""
        number = max(self.run_index, next_index(self.root, "settings-", ".json"))
        return inside(self.root, f"settings-{number:04d}.json")

    def save_sample(self, image: Image.Image, start: int, with_attention: bool = False) -> int:
        """Write a sample under the first free number from ``start`` (with ``with_attention``, a number whose
        attention picture is free too); returns the number."""
        number = start
        while True:
            while with_attention and self.attention_path(number).exists():
                number += 1
            _, number = claim_numbered(self.sample_path, image_writer(image, ".png"), number, self.root)
            if not with_attention or not self.attention_path(number).exists():
                return number
            number += 1  # the attention picture of that number appeared meanwhile: the sample stays, claim again

    def save_attention(self, image: Image.Image, number: int) -> int:
        """Write an attention picture as ``number`` (its sample's), or the next free number; returns it."""
        _, claimed = claim_numbered(self.attention_path, image_writer(image, ".png"), number, self.root)
        if claimed != number:
            logger.warning("attention/%s was taken; the attention picture of sample %d is %s", number, number, claimed)
        return claimed

    def save_grid(self, image: Image.Image, prompt: str) -> Path:
        """Write a grid of ``prompt``: ``<stem>-NNNN.png`` (layout ``"ldm"``: ``<stem>.png`` while it is free)."""
        stem = safe_stem(prompt)
        write = image_writer(image, ".png")
        if self.layout == "ldm":
            try:
                return atomic_write(inside(self.root, f"{stem}.png"), write, self.root, exclusive=True)
            except FileExistsError:
                pass
        start = next_index(self.root, stem + "-", ".png")
        return claim_numbered(lambda n: inside(self.root, f"{stem}-{n:04d}.png"), write, start, self.root)[0]

    def save_settings(self, data: Any) -> Path:
        """Write the run's ``settings-NNNN.json`` under the first free number."""
        start = max(self.run_index, next_index(self.root, "settings-", ".json"))
        path, self.run_index = claim_numbered(
            lambda n: inside(self.root, f"settings-{n:04d}.json"), text_writer(json_text(data)), start, self.root
        )
        return path

    def save_image(self, image: Image.Image, path: Path) -> Path:
        return save_image(image, path, self.root)

    def save_json(self, data: Any, path: Path) -> Path:
        return save_json(data, path, self.root)
