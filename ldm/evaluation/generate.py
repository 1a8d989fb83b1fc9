"""Images for the evaluation scripts, made by the shared sampling code (:func:`ldm.inference.sample_prompts`).

It follows the reference evaluator (reference-spec 1.9, ``LDMCLIPEvaluator``): DDIM with eta 0, classifier-free
guidance with the empty prompt as unconditional input, decode, clamp; optionally with Attend-and-Excite. Models are
loaded with :func:`ldm.inference.load_model`.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from ldm import inference
from ldm.models.diffusion.guidance.attend_and_excite import AttendExciteConfig

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
) -> Generation:
    """``n_samples`` images of ``prompt`` in batches of ``batch_size`` (latent ``shape``, default the model's).

    One ``torch.Generator`` seeded with ``seed`` draws the starting noise of all batches, so a run is reproducible
    and runs with and without A&E start from the same noise. ``ae_tokens`` (words/positions, e.g. ``"cat,dog"``)
    turns on Attend-and-Excite with ``ae_config`` (default: the official one), its schedule scaled to the steps run.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples ({n_samples}) and batch_size ({batch_size}) must be positive")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    sampler = inference.make_sampler(model, "ddim")
    shape = shape or latent_shape(model, 1)
    ae_used = None
    if ae_tokens.strip():
        ae_used, _ = inference.schedule_for_run(ae_config or AttendExciteConfig(), "ddim", ddim_steps,
                                                model.num_timesteps, log=False)  # fmt: skip
    out = Generation(images=torch.empty(0))
    images: list[Tensor] = []
    with inference.sampling_scope(model):
        n_batches = (n_samples + batch_size - 1) // batch_size
        for b in tqdm(range(n_batches), desc=f"sampling {prompt!r}", leave=False):
            bs = min(batch_size, n_samples - b * batch_size)
            batch = inference.sample_prompts(
                model, sampler, bs * [prompt], shape, ddim_steps, scale, eta=0.0, generator=generator,
                ae_tokens=ae_tokens, ae_config=ae_used,
            )  # fmt: skip
            images.append(batch.images)  # [bs, 3, H, W]
            out.report.update(batch.report)
            if batch.guidance is not None:
                out.records.extend(batch.guidance.records)
    out.images = torch.cat(images)  # [N, 3, H, W]
    return out


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
