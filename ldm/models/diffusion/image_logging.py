"""`LatentDiffusion.log_images`: the image grids the ImageLogger callback writes during training.

Keys: `inputs`, `reconstruction` (decode(encode(x))), `conditioning` (the captions drawn as images), `samples`
(DDIM, no guidance) and `samples_scaled` (DDIM with classifier-free guidance against the empty prompt).
All images are `[N, 3, H, W]` in about [-1, 1].
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

CAPTION_CHARS_PER_LINE = 30


def caption_images(captions: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Draw each caption in black on white; returns `[N, 3, H, W]` in [-1, 1]."""
    height, width = size
    images = []
    for caption in captions:
        canvas = Image.new("RGB", (width, height), "white")
        text = "\n".join(textwrap.wrap(str(caption), CAPTION_CHARS_PER_LINE))
        ImageDraw.Draw(canvas).multiline_text((2, 2), text, fill="black")
        images.append(np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


@torch.no_grad()
def log_images(
    model: Any,
    batch: dict,
    N: int = 8,  # noqa: N803 - the original keyword
    n_row: int = 4,
    sample: bool = True,
    ddim_steps: int = 200,
    ddim_eta: float = 1.0,
    plot_reconstruction: bool = True,
    unconditional_guidance_scale: float = 5.0,
    unconditional_guidance_label: str = "",
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Images of one batch for logging. `n_row` is accepted for compatibility (the logger makes the grid)."""
    from ldm.models.diffusion.ddim import DDIMSampler

    x = model.get_first_stage_input(batch)[:N]  # [N, 3, H, W]
    n = x.shape[0]
    z = model.get_first_stage_encoding(model.encode_first_stage(x))  # [N, C, h, w]
    log: dict[str, torch.Tensor] = {"inputs": x}
    if plot_reconstruction:
        log["reconstruction"] = model.decode_first_stage(z)
    conditional = model.model.conditioning_key is not None
    cond = uncond = None
    if conditional:
        captions = list(batch[model.cond_stage_key][:n])
        log["conditioning"] = caption_images(captions, (x.shape[2], x.shape[3])).to(x.device)
        cond = model.get_learned_conditioning(captions)
        if unconditional_guidance_scale != 1.0:
            uncond = model.get_learned_conditioning([unconditional_guidance_label] * n)
    if not sample:
        return log
    shape = tuple(z.shape[1:])
    sampler = DDIMSampler(model)
    with model.ema_scope("Plotting"):
        samples, _ = sampler.sample(ddim_steps, n, shape, cond, eta=ddim_eta, verbose=False, generator=generator)
        log["samples"] = model.decode_first_stage(samples)
        if uncond is not None:
            scaled, _ = sampler.sample(
                ddim_steps,
                n,
                shape,
                cond,
                eta=ddim_eta,
                verbose=False,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=uncond,
                generator=generator,
            )
            log["samples_scaled"] = model.decode_first_stage(scaled)
    return log
