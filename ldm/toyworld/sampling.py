"""Sample the bundled ToyWorld model and judge the images with the ToyWorld detector.

Shared by the model test (tests/test_toyworld_model.py), the demo (`ldm.toyworld.demo`) and the benchmarks
(`ldm.toyworld.benchmarks`). Every sample has its own seed: its starting noise ``x_T`` is drawn from
``torch.Generator().manual_seed(seed)``, so a sample does not depend on the batch it is in, and runs with and
without Attend-and-Excite start from the same noise (paired comparisons). DDIM with eta = 0 is deterministic; an
ancestral sampler draws its step noise from the same per-sample generator, after x_T.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ldm.toyworld.detect import Detection, DetectorConfig, detect_batch, parse_caption, scene_matches

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
INFERENCE_CONFIG = ROOT / "configs" / "toyworld" / "txt2img-inference.yaml"
WEIGHTS = ROOT / "models" / "toyworld" / "txt2img.safetensors"
HELDOUT_DIR = ROOT / "data" / "toyworld" / "heldout"
AE_CONFIG = ROOT / "configs" / "toyworld" / "attend_and_excite.yaml"  # A&E tuned for the toy model
# What each learned placeholder should draw, for the detector's verdicts: "*" the held-out star (any colour, learned
# from data/toyworld/heldout), "@" the yellow diamond (learned from data/toyworld/yellow_diamond; ldm.toyworld.concepts)
PLACEHOLDERS: dict[str, str | tuple[str, str]] = {"*": "star", "@": ("yellow", "diamond")}
MAX_OBJECTS = 8  # more detections than this: the sample is judged a failure (scene_matches refuses such lists)


def load_toyworld_model(
    config: str | Path = INFERENCE_CONFIG,
    ckpt: str | Path = WEIGHTS,
    embedding_path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """The shipped model (fp16 weights loaded strictly into an fp32 model), in eval mode, optionally with ``*``."""
    from ldm.inference import load_model

    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"{ckpt}: no such file (run scripts/train_toyworld.sh to make the weights)")
    return load_model(config, ckpt, embedding_path, device)


@dataclass
class SampleSettings:
    """Sampler knobs of the ToyWorld runs (a sampler of the registry, DDIM by default; eta 0; classifier-free
    guidance)."""

    sampler: str = "ddim"
    steps: int = 25
    scale: float = 3.0
    batch_size: int = 16
    size: int = 64


def start_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """``x_T`` for each seed: ``[N, C, h, w]``."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def sample_images(
    model: torch.nn.Module,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: SampleSettings | None = None,
    ae_tokens: Sequence[str] | str | None = None,
    ae_config=None,
    progress: bool = False,
    guidance: str = "ae",
) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] for prompt ``prompts[i]`` from seed ``seeds[i]``.

    ``ae_tokens``: the guidance method's token spec (``"circle,square"``), one for all prompts or one per prompt;
    None or "" samples without guidance. ``guidance``: the registered method (default Attend-and-Excite);
    ``ae_config``: its settings (default for A&E: the ToyWorld preset `AE_CONFIG`), the schedule rescaled to the
    steps the sampler runs. Sample i draws x_T (as ``start_noise``) and then any step noise from
    ``Generator().manual_seed(seeds[i])``.
    """
    from tqdm import tqdm

    from ldm.ae_flags import load_ae_config
    from ldm.guidance import get_method
    from ldm.inference import sample_prompts
    from ldm.models.diffusion.samplers import make_sampler, steps_run

    settings = settings or SampleSettings()
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    if isinstance(ae_tokens, str) or ae_tokens is None:
        ae_tokens = [ae_tokens or ""] * len(prompts)
    if len(ae_tokens) != len(prompts):
        raise ValueError(f"got {len(ae_tokens)} A&E token specs for {len(prompts)} prompts")
    f = 2 ** (len(model.first_stage_model.encoder.down) - 1)
    shape = (model.channels, settings.size // f, settings.size // f)  # [C, h, w]
    device = next(model.parameters()).device
    sampler = make_sampler(model, settings.sampler)
    ae_used = None
    method = get_method(guidance)
    if any(ae_tokens):
        if ae_config is None:
            ae_config = load_ae_config(AE_CONFIG) if method.name == "ae" else method.config_class()
        ae_used = method.for_steps(ae_config, steps_run(settings.sampler, settings.steps, model.num_timesteps))
    out = []
    starts = range(0, len(prompts), settings.batch_size)
    for lo in tqdm(starts, desc="sampling", disable=not progress):
        batch = list(prompts[lo : lo + settings.batch_size])
        specs = ae_tokens[lo : lo + settings.batch_size]
        n = len(batch)
        # each image's generator draws its x_T (as start_noise) and goes on to the sampler: a method that draws more
        # noise (INITNO's fresh rounds) draws it from the image's own seed, whatever the batch
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[lo : lo + n]]
        x_t = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)  # [n, C, h, w]
        if ae_used is not None and (len(set(specs)) != 1 or not specs[0]):
            raise ValueError("one A&E token spec per batch: group prompts with the same spec together")
        images = sample_prompts(
            model, sampler, batch, shape, settings.steps, settings.scale, x_T=x_t, generator=generators,
            ae_tokens=specs[0] if ae_used is not None else "", guidance=method if ae_used is not None else None,
            guidance_config=ae_used,
        ).images  # fmt: skip
        out.append(images)
    return torch.cat(out)


@dataclass
class Verdict:
    """What the detector says about one sample of a prompt."""

    prompt: str
    wanted: list[tuple[str | None, str]]
    detections: list[Detection]
    shapes_present: bool  # every wanted shape is shown (colours ignored), by distinct objects
    all_correct: bool  # every wanted (colour, shape) is shown by a distinct object

    def describe(self) -> str:
        seen = ", ".join(f"{d.colour} {d.shape}" for d in self.detections) or "nothing"
        return f"{'OK ' if self.all_correct else 'NO '} saw: {seen}"


def judge(
    images: torch.Tensor,
    prompts: Sequence[str],
    placeholders: dict[str, str | tuple[str, str]] | None = None,
    detector: DetectorConfig | None = None,
) -> list[Verdict]:
    """The detector's verdict for each image against the objects its prompt names."""
    placeholders = PLACEHOLDERS if placeholders is None else placeholders
    detections = detect_batch(images, detector)
    verdicts = []
    for prompt, dets in zip(prompts, detections, strict=True):
        wanted = parse_caption(prompt, placeholders)
        shapes_only = [(None, s) for _, s in wanted]
        if len(dets) > MAX_OBJECTS:  # a speckled, failed sample: no ToyWorld scene has this many objects
            verdicts.append(Verdict(prompt, wanted, dets, False, False))
            continue
        verdicts.append(Verdict(prompt, wanted, dets, scene_matches(dets, shapes_only), scene_matches(dets, wanted)))
    return verdicts


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, labels: Sequence[str] | None = None) -> Path:
    """Write ``images`` ``[N, 3, H, W]`` in [0, 1] as one PNG grid (``labels``: a short text under each image);
    returns the path written (an earlier grid of other content at ``path`` stays: this one is ``<name>-0001.png``)."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    pad, text_h = 2, (11 if labels else 0)
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = Image.new("RGB", (ncol * (w + pad) + pad, nrows * (h + pad + text_h) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k in range(n):
        r, q = divmod(k, ncol)
        x0, y0 = pad + q * (w + pad), pad + r * (h + pad + text_h)
        arr = (images[k].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype("uint8")
        grid.paste(Image.fromarray(arr), (x0, y0))
        if labels:
            draw.text((x0 + 1, y0 + h), labels[k][:12], fill=(0, 0, 0))
    from ldm.outputs import image_writer, save_record

    # atomic (a full disk leaves no partial file); a rerun's grid of another content is <name>-0001.png
    return save_record(image_writer(grid, path), path, keep_same=True)
