"""The ToyWorld detector's verdicts on sampling runs written by scripts/txt2img.py (the demo, scripts/demo.sh,
summarised by scripts/toyworld_demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm.toyworld.sampling import PLACEHOLDERS, judge


def load_images(folder: Path) -> torch.Tensor:
    """``folder/*.png`` (sorted) as ``[N, 3, H, W]`` in [0, 1]."""
    paths = sorted(folder.glob("*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) if arrays else torch.zeros(0, 3, 64, 64)


def ae_setting(settings: dict) -> str:
    """Short name of the A&E setting a txt2img run used: its softmax scale and map side, e.g. "x100 16x16"."""
    ae = settings.get("attend_and_excite") or {}
    if not ae:
        return ""
    res = ae.get("attention_res")
    return f"x{ae.get('softmax_scale', 0):g} {res}x{res}"


def summarise_run(run: Path) -> tuple[str, str, int, int, list[str], int]:
    """(prompt, mode, images showing everything asked, images, per-image lines, images showing every named shape)
    of one txt2img output folder."""
    settings = json.loads(max(run.glob("settings-*.json")).read_text())  # the run's latest record
    extra = settings.get("extra", {})
    prompt = extra.get("prompt") or next(iter(settings.get("prompts", {})), "?")
    ae_tokens = settings.get("options", {}).get("ae_tokens", "")
    mode = f"A&E {ae_setting(settings)} on '{ae_tokens}'" if ae_tokens else "plain"
    if extra.get("embedding_path"):
        words = [w for w in PLACEHOLDERS if w in prompt]
        mode += f" + learned {' '.join(words) or 'words'}"
    images = load_images(run / "samples")
    if len(images) == 0:
        return prompt, mode, 0, 0, [], 0
    verdicts = judge(images, [prompt] * len(images))
    lines = [f"    {k}: {v.describe()}" for k, v in enumerate(verdicts)]
    shapes = sum(v.shapes_present for v in verdicts)
    return prompt, mode, sum(v.all_correct for v in verdicts), len(verdicts), lines, shapes
