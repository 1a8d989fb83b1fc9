"""Checks of the sampling flags against the model's config, before any model is loaded.

One place for every script that samples (txt2img, stable_txt2img, the evaluation scripts):

- the files named by flags exist (:func:`check_files`), and the config reads (:func:`ldm.util.load_yaml`);
- ``--H``/``--W`` are multiples of the model's total downsampling, the first stage's factor ``f`` times the UNet's
  ``2^(levels - 1)``, and at least that large; the error suggests the nearest valid sizes;
- ``--n_samples``, ``--n_iter`` and the step count of every sampler (DDIM, PLMS and DDPM alike) are in
  ``1..timesteps``; a NaN or infinite ``--scale`` is refused, a negative one or 0 (the prompt is ignored) warns;
- with ``--ae_tokens``, the A&E ``attention_res`` is a side of the cross-attention maps at that image size.

Every failure is a :class:`ldm.errors.UserError` naming the flag and how to fix it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ldm.errors import MissingFileError, UserError
from ldm.models.description import ModelDescription, describe_config
from ldm.util import load_yaml, repo_path

logger = logging.getLogger(__name__)

__all__ = [
    "ModelGeometry", "model_geometry", "check_files", "nearest_sizes", "check_image_size", "check_count",
    "attention_sides", "check_attention_res", "check_sampling", "check_sampling_flags", "check_scale",
]  # fmt: skip

# What a model config fixes about the sampling flags is its description (``ldm.models.description``); the old name
# stays importable.
ModelGeometry = ModelDescription


def model_geometry(config: DictConfig) -> ModelDescription:
    """The :class:`ModelDescription` of a model config (``model:`` at the top, or the model itself)."""
    return describe_config(config)


def check_files(files: Sequence[tuple[str, str | os.PathLike | None, bool]]) -> list[Path | None]:
    """``(flag, path, required)`` triples -> the paths (relative ones may resolve under the repository).

    A required flag without a path, or a path that is not a file, is a :class:`MissingFileError` naming the flag.
    """
    found: list[Path | None] = []
    for flag, path, required in files:
        if not path:
            if required:
                raise MissingFileError(f"{flag} is required")
            found.append(None)
            continue
        p = repo_path(path)
        if not p.is_file():
            what = "a folder, not a file" if p.is_dir() else "no such file"
            raise MissingFileError(f"{flag} {path}: {what}")
        found.append(p)
    return found


def nearest_sizes(value: int, multiple: int) -> list[int]:
    """The valid sizes nearest ``value``: the multiples of ``multiple`` just below and above it (at least one)."""
    below = value // multiple * multiple
    above = below + multiple
    return [s for s in (below, above) if s >= multiple]


def check_image_size(H: int, W: int, geometry: ModelGeometry, config: str = "the config") -> None:
    """``H`` and ``W`` are positive multiples of ``geometry.downsampling`` (the error suggests the nearest)."""
    step, f, bottom = geometry.downsampling, geometry.first_stage_factor, 2 ** (geometry.unet_levels - 1)
    for flag, value in (("--H", H), ("--W", W)):
        if value >= step and value % step == 0:
            continue
        sizes = " or ".join(str(s) for s in nearest_sizes(max(value, 0), step))
        raise UserError(
            f"{flag} {value}: image sides must be multiples of {step} for this model ({config}: the first stage "
            f"downsamples by {f} and the UNet by {bottom}), at least {step}; use {flag} {sizes}"
        )


def check_count(flag: str, value: int, high: int | None = None, why: str = "") -> None:
    """``1 <= value`` (and ``<= high``), else a :class:`UserError` naming the flag."""
    if value >= 1 and (high is None or value <= high):
        return
    bound = f"between 1 and {high}{why}" if high is not None else "at least 1"
    raise UserError(f"{flag} {value}: must be {bound}")


def attention_sides(H: int, W: int, geometry: ModelDescription) -> list[int]:
    """The sides of the (square) cross-attention maps at image size ``H`` x ``W``, largest first."""
    if H != W:
        return []
    return [h for h, _ in geometry.attention_sides(H, W)]


def check_attention_res(res: int, H: int, W: int, geometry: ModelGeometry, flag: str = "--ae_attention_res") -> None:
    """Attend-and-Excite's ``attention_res`` is the side of some cross-attention map at this (valid) image size."""
    if H != W:
        raise UserError(
            f"Attend-and-Excite needs square attention maps: --H {H} and --W {W} differ; use --H {max(H, W)} "
            f"--W {max(H, W)} (or sample without --ae_tokens)"
        )
    sides = attention_sides(H, W, geometry)
    if res in sides:
        return
    step, f = geometry.downsampling, geometry.first_stage_factor
    sizes = sorted({res * ds * f for ds in geometry.attention_ds if (res * ds * f) % step == 0})
    other = f", or --H/--W {' or '.join(map(str, sizes))} for {res}x{res} maps" if sizes else ""
    raise UserError(
        f"{flag} {res}: at --H {H} --W {W} this model's cross-attention maps are "
        f"{', '.join(f'{s}x{s}' for s in sides)}; use {flag} {' or '.join(map(str, sides))}{other}"
    )


def check_scale(scale: float, flag: str = "--scale") -> float:
    """The classifier-free guidance scale: NaN and infinity are refused (every image would be black); 0 warns that
    the prompt is ignored (only the unconditional prediction is left), a negative scale that it pushes away from it."""
    scale = float(scale)
    if not math.isfinite(scale):
        raise UserError(
            f"{flag} {scale}: the guidance scale must be a finite number (NaN or infinity makes every image black); "
            "use e.g. 7.5 (Stable Diffusion), 5 (LDM) or 3 (ToyWorld)"
        )
    if scale == 0:
        logger.warning(
            "%s 0 ignores the prompt: classifier-free guidance at scale 0 keeps only the unconditional prediction; "
            "use 1 for the conditional model alone, more to follow the prompt more closely", flag
        )  # fmt: skip
    elif scale < 0:
        logger.warning(
            "%s %g is negative: classifier-free guidance then pushes the images away from the prompt", flag, scale
        )
    return scale


def check_sampling(
    config_path: str | os.PathLike,
    *,
    H: int | None = None,
    W: int | None = None,
    steps: int = 50,
    n_samples: int = 1,
    n_iter: int = 1,
    scale: float | None = None,
    ae_attention_res: int | None = None,
    files: Sequence[tuple[str, str | os.PathLike | None, bool]] = (),
    steps_flag: str = "--ddim_steps",
    counts: Sequence[tuple[str, int]] = (),
    attention_res_flag: str = "--ae_attention_res",
) -> ModelGeometry:
    """Check the sampling flags against ``config_path`` before the model is loaded; returns its geometry.

    ``H``/``W`` None: the model's own size. ``ae_attention_res``: checked when A&E is on (not None). ``files``:
    ``(flag, path, required)`` checked first. ``counts``: further ``(flag, value)`` pairs that must be >= 1.
    """
    check_files([("--config", config_path, True), *files])
    geometry = model_geometry(load_yaml(config_path, "--config"))
    size = geometry.image_size * geometry.first_stage_factor
    H, W = size if H is None else H, size if W is None else W
    check_image_size(H, W, geometry, str(config_path))
    for flag, value in (("--n_samples", n_samples), ("--n_iter", n_iter), *counts):
        check_count(flag, value)
    check_count(steps_flag, steps, geometry.timesteps, " (the number of diffusion timesteps of the model)")
    if scale is not None:
        check_scale(scale)
    if ae_attention_res is not None:
        check_attention_res(ae_attention_res, H, W, geometry, flag=attention_res_flag)
    return geometry


def check_sampling_flags(
    opt: argparse.Namespace, ckpt_flag: str = "--ckpt_path", steps_flag: str = "--ddim_steps", ae: bool | None = None
) -> ModelGeometry:
    """:func:`check_sampling` for a script's parsed flags (the names the txt2img and evaluation scripts share:
    ``config``, ``H``, ``W``, ``n_samples``, ``n_iter``, ``scale``, ``embedding_path``, ``batch_size``,
    ``ae_tokens`` and the ``--ae_*`` flags; ``f`` and ``C`` when the script has them must match the config).
    ``ae``: whether Attend-and-Excite runs (None: when ``--ae_tokens`` is given)."""
    ae_res, res_flag = None, "--ae_attention_res"
    if ae or (ae is None and getattr(opt, "ae_tokens", "").strip() and not hasattr(opt, "guidance")):
        from ldm.ae_flags import attend_excite_config

        ae_res = attend_excite_config(opt).attention_res
    elif ae is None and hasattr(opt, "guidance"):
        from ldm.ae_flags import model_family
        from ldm.guidance.flags import guidance_from_args

        choice = guidance_from_args(opt, model_family(opt.config))  # the method's flag errors come before loading
        ae_res = getattr(choice.config, "attention_res", None) if choice.active else None
        given_g = hasattr(opt, "g_attention_res")  # the flag the user typed is the one the error names
        res_flag = "--ae_attention_res" if choice.name == "ae" and not given_g else "--g_attention_res"
    counts = [("--batch_size", opt.batch_size)] if getattr(opt, "batch_size", None) is not None else []
    geometry = check_sampling(
        opt.config, H=getattr(opt, "H", None), W=getattr(opt, "W", None), steps=getattr(opt, steps_flag.lstrip("-")),
        n_samples=getattr(opt, "n_samples", 1), n_iter=getattr(opt, "n_iter", 1), scale=getattr(opt, "scale", None),
        ae_attention_res=ae_res, steps_flag=steps_flag, counts=counts, attention_res_flag=res_flag,
        files=[(ckpt_flag, getattr(opt, ckpt_flag.lstrip("-")), True),
               ("--embedding_path", getattr(opt, "embedding_path", None), False)],
    )  # fmt: skip
    for flag, value, own in (("--f", getattr(opt, "f", None), geometry.first_stage_factor),
                             ("--C", getattr(opt, "C", None), geometry.channels)):  # fmt: skip
        if value is not None and value != own:
            raise UserError(f"{flag} {value} does not match --config {opt.config}, whose model has {own}; drop {flag}")
    return geometry
