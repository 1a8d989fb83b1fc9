"""SDXL's size and crop conditioning and the other sampling flags SDXL adds (shared by stable_txt2img and the engine):

- ``--original_size H,W``: the size the image "was" before any resize (default: the image size, ``--H,--W``);
- ``--crop_top_left TOP,LEFT``: the crop's top-left corner (default ``0,0``: not cropped);
- ``--target_size H,W``: the size asked for (default: the image size);
- ``--negative_prompt``: CFG's unconditional text (default: none; SDXL then uses zeros, as sgm and diffusers);
- ``--decode_precision auto|full|same``: decode in float32 (``full``; ``auto`` for SDXL, whose autoencoder overflows
  in float16) or in the sampling precision (``same``; ``auto`` for the other families).

Bad values are one ``error:`` line naming the flag (``ldm.errors.UserError``).
"""

from __future__ import annotations

import argparse

from ldm.errors import UserError
from ldm.modules.encoders.sdxl import SizeConditioning

SIZE_FLAGS = ("original_size", "crop_top_left", "target_size")


def add_size_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SDXL (size/crop conditioning, negative prompt, decoding)")
    g.add_argument("--original_size", type=str, default=None, help="SDXL: original image size H,W (default: --H,--W)")
    g.add_argument("--crop_top_left", type=str, default=None, help="SDXL: crop corner TOP,LEFT (default: 0,0)")
    g.add_argument("--target_size", type=str, default=None, help="SDXL: target size H,W (default: --H,--W)")
    g.add_argument("--negative_prompt", type=str, default="", help="CFG's unconditional text (default: none)")
    g.add_argument("--decode_precision", type=str, choices=("auto", "full", "same"), default="auto",
                   help="auto: float32 for SDXL (fp16 overflows its VAE), else the sampling precision")  # fmt: skip


def _pair(flag: str, text: str, minimum: int) -> tuple[int, int]:
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--{flag} {text!r}: give two integers like 1024,1024") from None
    if a < minimum or b < minimum:
        raise UserError(f"--{flag} {text!r}: values must be at least {minimum}")
    return a, b


def size_conditioning(opt: argparse.Namespace, family: str) -> SizeConditioning | None:
    """The flags' ``SizeConditioning`` for an SDXL model (None when none is given); an error for other families."""
    given = {f: getattr(opt, f, None) for f in SIZE_FLAGS if getattr(opt, f, None)}
    if not given:
        return None
    if family != "sdxl":
        names = ", ".join(f"--{f}" for f in given)
        raise UserError(f"{names}: size and crop conditioning exist only for SDXL models; drop {names}")
    original = _pair("original_size", given["original_size"], 1) if "original_size" in given else None
    crop = _pair("crop_top_left", given["crop_top_left"], 0) if "crop_top_left" in given else (0, 0)
    target = _pair("target_size", given["target_size"], 1) if "target_size" in given else None
    return SizeConditioning(original, crop, target)
