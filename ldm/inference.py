"""The text-to-image routine behind ``scripts/txt2img.py`` (LDM) and ``scripts/stable_txt2img.py`` (SD v1).

Builds the conditioning (placeholders go through the embedding manager), picks DDIM / PLMS / DDPM, plugs in
Attend-and-Excite when ``--ae_tokens`` is given, decodes, and saves the samples, the grids, optional attention
images and a ``settings.json`` of everything used. The scripts only parse flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from ldm.models.diffusion.guidance.attend_and_excite import (
    AttendAndExcite,
    AttendExciteConfig,
    capture_token_maps,
    scale_schedule,
)
from ldm.models.diffusion.guidance.tokens import (
    describe_groups,
    end_position,
    format_token_table,
    resolve_ae_tokens,
    token_table,
)
from ldm.models.diffusion.guidance.visualize import render_attention
from ldm.models.diffusion.schedule import make_ddim_timesteps

logger = logging.getLogger(__name__)

DEFAULT_AE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "guidance" / "attend_and_excite.yaml"
AE_FIELDS = [f.name for f in dataclasses.fields(AttendExciteConfig) if f.name != "token_indices"]


# --- A&E flags ---------------------------------------------------------------------------------------------------
def _pairs(text: str) -> dict[int, float]:
    try:
        return {int(k): float(v) for k, v in (item.split(":") for item in text.split(",") if item.strip())}
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'step:threshold,...' like '0:0.05,10:0.5', got {text!r}") from err


def _range(text: str) -> tuple[float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'start,end' like '1.0,0.5', got {text!r}")
    return parts[0], parts[1]


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_attend_excite_args(parser: argparse.ArgumentParser) -> None:
    """``--ae_tokens``, ``--ae_config`` and one ``--ae_<field>`` flag per ``AttendExciteConfig`` field."""
    g = parser.add_argument_group("Attend-and-Excite (flags override --ae_config)")
    tokens_help = "tokens to excite: words and/or 1-based positions ('*,dog', '2,5'); empty = plain sampling"
    g.add_argument("--ae_tokens", type=str, default="", help=tokens_help)
    config_help = "YAML with the A&E fields (configs/guidance/seed_fork.yaml: the earlier fork's preset)"
    g.add_argument("--ae_config", type=str, default=str(DEFAULT_AE_CONFIG), help=config_help)
    g.add_argument("--save_attention", action="store_true", help="save each excited token's map over the image")
    kinds: dict[str, Any] = {
        "attention_res": int, "max_iter_to_alter": int, "thresholds": _pairs, "scale_factor": float,
        "scale_range": _range, "smooth_attentions": _bool, "sigma": float, "kernel_size": int,
        "softmax_scale": float, "softmax_end": str, "max_refinement_steps": int, "loss_reduction": str,
        "schedule_steps": _optional_int,
    }  # fmt: skip
    for name in AE_FIELDS:
        g.add_argument(f"--ae_{name}", type=kinds[name], default=None, help=f"AttendExciteConfig.{name}")


def attend_excite_config(args: argparse.Namespace) -> AttendExciteConfig:
    """The YAML of ``--ae_config`` with the ``--ae_<field>`` flags that were given on top."""
    path = Path(args.ae_config)
    if not path.is_file():
        raise FileNotFoundError(f"--ae_config {path}: no such file (see configs/guidance/)")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    values = dict(raw.get("attend_and_excite", raw))
    unknown = set(values) - {f.name for f in dataclasses.fields(AttendExciteConfig)}
    if unknown:
        raise ValueError(f"--ae_config {path}: unknown fields {sorted(unknown)}; allowed: {AE_FIELDS}")
    for name in AE_FIELDS:
        if getattr(args, f"ae_{name}", None) is not None:
            values[name] = getattr(args, f"ae_{name}")
    values.pop("token_indices", None)
    return AttendExciteConfig(**values)


# --- model and sampler -------------------------------------------------------------------------------------------
def load_model(config_path: str, ckpt: str, embedding_path: str | None, device: torch.device) -> torch.nn.Module:
    from ldm.util import load_model_from_config

    for flag, p in (("--config", config_path), ("--ckpt", ckpt), ("--embedding_path", embedding_path)):
        if p and not Path(p).is_file():
            raise FileNotFoundError(f"{flag} {p}: no such file")
    model = load_model_from_config(OmegaConf.load(config_path), ckpt, strict=False)
    if embedding_path:
        if getattr(model, "embedding_manager", None) is None:
            raise ValueError(f"--embedding_path given but {config_path} has no personalization_config")
        model.embedding_manager.load(embedding_path)
    return model.to(device).eval()


def make_sampler(model: torch.nn.Module, name: str):
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.models.diffusion.ddpm_sampler import DDPMSampler
    from ldm.models.diffusion.plms import PLMSSampler

    samplers = {"ddim": DDIMSampler, "plms": PLMSSampler, "ddpm": DDPMSampler}
    if name not in samplers:
        raise ValueError(f"unknown sampler {name!r}; use one of {sorted(samplers)}")
    return samplers[name](model)


def steps_run(sampler_name: str, steps: int, num_timesteps: int) -> int:
    """How many steps the sampler really runs (DDIM 'uniform' runs more when S does not divide T)."""
    if sampler_name == "ddpm":
        return steps
    return len(make_ddim_timesteps("uniform", steps, num_timesteps))


@dataclass
class SamplingOptions:
    outdir: str
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    scale: float = 7.5
    n_iter: int = 1
    H: int = 512
    W: int = 512
    C: int = 4
    f: int = 8
    seed: int = 42
    fixed_code: bool = False
    skip_grid: bool = False
    skip_save: bool = False
    n_rows: int = 0
    precision: str = "full"
    layout: str = "sd"  # "sd": samples/{:05}.png, <prompt>-{grid:04}.png; "ldm": samples/{:04}.png, <prompt>.png
    ae_tokens: str = ""
    save_attention: bool = False
    extra_settings: dict = field(default_factory=dict)


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> one ``[3, H', W']`` grid with ``nrow`` images per row (torchvision's layout)."""
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = r * (h + padding) + padding, q * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((255.0 * image.permute(1, 2, 0).cpu().numpy()).round().astype(np.uint8))  # [H, W, 3]


def _prompt_tokens(model: torch.nn.Module, prompt: str) -> tuple[list[int], dict[int, str]]:
    """The prompt's token ids after the placeholder splice, and placeholder id -> string."""
    encoder = model.cond_stage_model
    ids = encoder.tokenize([prompt])  # [1, 77]
    manager = getattr(model, "embedding_manager", None)
    placeholders: dict[int, str] = {}
    if manager is not None:
        placeholders = {int(tok): s for s, tok in manager.string_to_token_dict.items()}
        with torch.no_grad():
            ids, _ = manager(ids, encoder.token_embedding(ids))
    return ids[0].tolist(), placeholders


def resolve_batch_tokens(model: torch.nn.Module, prompts: list[str], spec: str) -> tuple[list, list[int], dict]:
    """Per-sample token groups and end-of-text positions, and a per-prompt report (logged and saved)."""
    tokenizer = model.cond_stage_model.tokenizer
    groups, eots, report = [], [], {}
    for prompt in prompts:
        ids, placeholders = _prompt_tokens(model, prompt)
        table = token_table(ids, tokenizer, placeholders)
        resolved = resolve_ae_tokens(spec, ids, tokenizer, placeholders)
        if prompt not in report:
            excited = describe_groups(resolved, table)
            logger.info("Prompt %r tokens: %s", prompt, format_token_table(table))
            logger.info("A&E excites positions: %s", excited)
            report[prompt] = {"tokens": dict(table), "excited": [list(g) for g in resolved]}
        groups.append(resolved)
        eots.append(end_position(ids, tokenizer))
    return groups, eots, report


# --- the run -----------------------------------------------------------------------------------------------------
def run_txt2img(
    model: torch.nn.Module, batches: list[list[str]], opts: SamplingOptions, ae_config: AttendExciteConfig
) -> dict[str, Any]:
    """Sample every batch of prompts ``n_iter`` times and write the outputs; returns the settings written."""
    device = next(model.parameters()).device
    outdir = Path(opts.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    sampler = make_sampler(model, opts.sampler)
    n_run = steps_run(opts.sampler, opts.steps, model.num_timesteps)
    ae_used = scale_schedule(ae_config, n_run)
    use_ae = bool(opts.ae_tokens.strip())
    if use_ae:
        logger.info(
            "A&E over %d steps: thresholds %s, updates at steps < %d, up to %d refinement iterations, %s loss",
            n_run, ae_used.thresholds, ae_used.max_iter_to_alter, ae_used.max_refinement_steps,
            ae_used.loss_reduction,
        )  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    latent_shape = (opts.C, opts.H // opts.f, opts.W // opts.f)
    batch_size = len(batches[0])
    start_code = None
    if opts.fixed_code:
        start_code = torch.randn((batch_size, *latent_shape), generator=generator, device=device)
    precision = torch.autocast(device.type) if opts.precision == "autocast" and device.type == "cuda" else None
    ema = model.ema_scope() if hasattr(model, "ema_scope") else contextlib.nullcontext()
    unet = model.model.diffusion_model
    settings: dict[str, Any] = {"options": dataclasses.asdict(opts), "attend_and_excite": None, "prompts": {}}
    if use_ae:
        settings["attend_and_excite"] = dataclasses.asdict(ae_used) | {"steps_run": n_run}
    base_count = len(list(sample_dir.glob("*.png")))
    grid_count = len(list(outdir.glob("*.png")))
    all_samples: list[torch.Tensor] = []
    with torch.no_grad(), precision or contextlib.nullcontext(), ema:
        for _ in tqdm(range(opts.n_iter), desc="Sampling"):
            for prompts in tqdm(batches, desc="data"):
                n = len(prompts)
                uc = model.get_learned_conditioning(n * [""]) if opts.scale != 1.0 else None  # [n, 77, D]
                c = model.get_learned_conditioning(list(prompts))  # [n, 77, D]
                guidance, groups = None, None
                if use_ae or opts.save_attention:
                    if not use_ae:
                        raise ValueError("--save_attention needs --ae_tokens (the tokens whose maps to show)")
                    groups, eots, report = resolve_batch_tokens(model, list(prompts), opts.ae_tokens)
                    settings["prompts"].update(report)
                    guidance = AttendAndExcite(unet, ae_used, token_indices=groups, eot_positions=eots)
                x_T = start_code[:n] if start_code is not None else None
                kwargs: dict[str, Any] = {"eta": opts.eta} if opts.sampler != "ddpm" else {}
                samples, _ = sampler.sample(
                    opts.steps, n, latent_shape, conditioning=c, x_T=x_T, verbose=False, generator=generator,
                    unconditional_guidance_scale=opts.scale, unconditional_conditioning=uc,
                    latent_guidance=guidance, **kwargs,
                )  # fmt: skip
                images = ((model.decode_first_stage(samples).float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
                for k, image in enumerate(images):
                    if not opts.skip_save:
                        name = f"{base_count:05}.png" if opts.layout == "sd" else f"{base_count:04}.png"
                        to_pil(image).save(sample_dir / name)
                    if opts.save_attention:
                        _save_attention(model, unet, samples[k : k + 1], c[k : k + 1], groups[k], prompts[k],
                                        image, ae_used, outdir / "attention" / f"{base_count:05}.png")  # fmt: skip
                    base_count += 1
                all_samples.append(images)
    if not opts.skip_grid and all_samples:
        grid = make_grid(torch.cat(all_samples), nrow=opts.n_rows or batch_size)
        stem = batches[0][0].replace(" ", "-")[:100]
        grid_name = f"{stem}-{grid_count:04}.png" if opts.layout == "sd" else f"{stem}.png"
        to_pil(grid).save(outdir / grid_name)
    settings["extra"] = opts.extra_settings
    (outdir / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    logger.info("Samples are in %s", outdir)
    return settings


def _save_attention(
    model: torch.nn.Module,
    unet: torch.nn.Module,
    z: torch.Tensor,
    c: torch.Tensor,
    groups: tuple,
    prompt: str,
    image: torch.Tensor,
    config: AttendExciteConfig,
    path: Path,
) -> None:
    """One conditional pass on the final latent at t=1; each excited token's smoothed map over the image."""
    t = torch.ones(1, dtype=torch.long, device=z.device)
    maps = capture_token_maps(unet, z.float(), t, c.float(), [groups], config)[0]  # [K, r, r]
    ids, placeholders = _prompt_tokens(model, prompt)
    names = dict(token_table(ids, model.cond_stage_model.tokenizer, placeholders))
    labels = [" ".join(dict.fromkeys(names[p] for p in g)) for g in groups]
    path.parent.mkdir(parents=True, exist_ok=True)
    render_attention(to_pil(image), maps, labels).save(path)


def read_prompts(prompt: str, from_file: str | None, batch_size: int) -> list[list[str]]:
    """Batches of prompts: ``batch_size`` copies of ``prompt``, or the file's lines in chunks of ``batch_size``."""
    if not from_file:
        return [batch_size * [prompt]]
    path = Path(from_file)
    if not path.is_file():
        raise FileNotFoundError(f"--from-file {from_file}: no such file")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"--from-file {from_file}: no prompts in the file")
    return [lines[i : i + batch_size] for i in range(0, len(lines), batch_size)]


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def first_stage_factor(config_path: str, default: int = 8) -> int:
    """The autoencoder's downsampling factor f = 2^(len(ch_mult) - 1) read from the model config."""
    config = OmegaConf.load(config_path)
    ch_mult = OmegaConf.select(config, "model.params.first_stage_config.params.ddconfig.ch_mult")
    return 2 ** (len(ch_mult) - 1) if ch_mult else default
