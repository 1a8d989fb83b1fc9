"""Images for the evaluation scripts, made by the shared sampling code (:func:`ldm.inference.sample_prompts`).

It follows the reference evaluator (reference-spec 1.9, ``LDMCLIPEvaluator``): DDIM with eta 0 (or another sampler of
the registry), classifier-free
guidance with the empty prompt as unconditional input, decode, clamp; optionally with Attend-and-Excite. Models are
loaded with :func:`ldm.inference.load_model`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ldm import inference
from ldm.engine.items import make_items
from ldm.engine.runner import EngineSettings, sample_items
from ldm.guidance.attend_excite.config import AttendExciteConfig

logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """The images of one prompt and, with A&E, what the guidance did."""

    images: Tensor  # [N, 3, H, W] in [0, 1], on the CPU
    report: dict = field(default_factory=dict)  # prompt -> {"tokens": table, "excited": position groups}
    records: list[dict] = field(default_factory=list)  # AttendAndExcite.records of every batch


def add_size_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--H`` and ``--W``: the size of the generated images in pixels (default: the model's)."""
    for name, side in (("--H", "height"), ("--W", "width")):
        parser.add_argument(name, type=int, default=None, help=f"image {side} in pixels (default: the model's size)")


def latent_shape(model: torch.nn.Module, f: int, H: int | None = None, W: int | None = None) -> tuple[int, int, int]:
    """``(C, H/f, W/f)``; a missing side is the model's own latent size (``model.image_size``)."""
    size = int(model.image_size)
    return int(model.channels), H // f if H else size, W // f if W else size


def generate_images(
    model: torch.nn.Module,
    prompt: str,
    n_samples: int,
    ddim_steps: int,
    scale: float,
    seed: int,
    batch_size: int,
    shape: tuple[int, int, int] | None = None,
    ae_tokens: str = "",
    ae_config: AttendExciteConfig | None = None,
    precision: str = "full",
    sampler: str = "ddim",
) -> Generation:
    """``n_samples`` images of ``prompt`` in batches of ``batch_size`` (latent ``shape``, default the model's), in
    memory, by the engine's rule: image ``i`` starts from its own noise, seeded by ``item_seed(seed, prompt, i)``, so
    the images are those the engine writes (``run_items``) and the same with and without A&E. ``ae_tokens``
    (words/positions, e.g. ``"cat,dog"``) turns on Attend-and-Excite with ``ae_config`` (default: the official one),
    its schedule scaled to the steps run. ``sampler``: a name of ``ldm.models.diffusion.samplers.SAMPLERS``.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples ({n_samples}) and batch_size ({batch_size}) must be positive")
    method = "ae" if ae_tokens.strip() else "plain"
    # The paths are never written: the items only carry prompt, index and seed here.
    items = make_items(".", [prompt], n_samples, [method], seed, path_of=lambda p, i, m: f"{i:04}.png",
                       ae_tokens_of=lambda p: ae_tokens)  # fmt: skip
    settings = EngineSettings(latent_shape=shape or latent_shape(model, 1), sampler=sampler, steps=ddim_steps,
                              scale=scale, batch_size=batch_size, precision=precision)  # fmt: skip
    ae_used = None
    if method == "ae":
        ae_used, _ = inference.schedule_for_run(ae_config or AttendExciteConfig(), sampler, ddim_steps,
                                                model.num_timesteps, log=False)  # fmt: skip
    denoiser = inference.make_sampler(model, sampler)
    out = Generation(images=torch.empty(0))
    images: list[Tensor] = []
    with inference.sampling_scope(model, precision):
        for start in tqdm(range(0, n_samples, batch_size), desc=f"sampling {prompt!r}", leave=False):
            batch = sample_items(model, denoiser, items[start : start + batch_size], settings, ae_used)
            images.append(batch.images)  # [bs, 3, H, W]
            out.report.update(batch.report)
            if batch.guidance is not None:
                out.records.extend(batch.guidance.records)
    out.images = torch.cat(images)  # [N, 3, H, W]
    return out


def read_guidance_records(paths: Sequence[Path | None]) -> list[dict]:
    """The per-step A&E records of the images whose record files exist (images made before the engine have none)."""
    records: list[dict] = []
    missing = 0
    for path in paths:
        if path is None or not path.is_file():
            missing += 1
            continue
        records.extend(json.loads(path.read_text())["guidance"])
    if missing:
        logger.warning("%d images have no A&E record; the guidance summary leaves them out", missing)
    return records


def guidance_summary(records: list[dict]) -> dict:
    """What A&E did over a run: guided steps, regular updates, refinement iterations, mean loss per step."""
    losses: dict[int, list[float]] = defaultdict(list)
    updates = iterations = 0
    for rec in records:
        for group in rec["groups"]:
            if "loss" in group:
                losses[rec["step"]].append(group["loss"])
            updates += "update_loss" in group
            iterations += group.get("refinement", {}).get("iterations", 0)
    return {
        "guided_steps": sorted(losses),
        "updates": updates,
        "refinement_iterations": iterations,
        "mean_loss": {step: sum(v) / len(v) for step, v in sorted(losses.items())},
    }
