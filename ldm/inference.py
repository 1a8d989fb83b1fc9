"""Model loading and sampling shared by ``scripts/txt2img.py`` (LDM), ``scripts/stable_txt2img.py`` (SD v1) and the
evaluation scripts (``ldm/evaluation/generate.py``).

- :func:`load_model`: the one loader (strict; files checked first, errors name the flag).
- :func:`sample_prompts`: the one prompts -> images routine: conditioning (placeholders go through the embedding
  manager) and the empty-prompt ``uc`` for classifier-free guidance, the guidance method (``ldm.guidance``: A&E when
  tokens are given, or any registered method), the sampler (DDIM / PLMS / DDPM), decoding to ``[0, 1]``.
- the txt2img scripts' run (samples, grids, attention pictures, settings records) is ``ldm/txt2img_run.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.ae_flags import AE_FIELDS, DEFAULT_AE_CONFIG, add_attend_excite_args, attend_excite_config
from ldm.errors import UserError
from ldm.guidance import GuidanceMethod, GuidanceRequest, get_method
from ldm.guidance.attend_excite.config import AttendExciteConfig, display_config
from ldm.guidance.engine import StepMaps
from ldm.guidance.flags import GuidanceChoice, add_guidance_args, guidance_from_args
from ldm.guidance.tokens import describe_groups, format_token_table, resolve_ae_tokens
from ldm.guidance.tokens import prompt_tokens as read_prompt_tokens
from ldm.models.description import CONFIGS_WITH_TOKENS, describe_config, describe_model
from ldm.models.diffusion import samplers
from ldm.models.diffusion.sampler_base import Generators
from ldm.precision import precision_scope
from ldm.util import load_yaml
from ldm.validation import check_files, check_sampling_flags

logger = logging.getLogger(__name__)

__all__ = [  # the A&E and guidance flags live in ldm.ae_flags / ldm.guidance.flags; the scripts reach them here
    "AE_FIELDS", "DEFAULT_AE_CONFIG", "add_attend_excite_args", "attend_excite_config", "add_guidance_args",
    "guidance_from_args", "GuidanceChoice", "add_sampling_guidance_args", "guidance_choice", "display_config",
    "load_model", "make_sampler", "steps_run", "schedule_for_run", "sampling_scope", "SampledBatch",
    "sample_prompts", "resolve_batch_tokens", "pick_device", "first_stage_factor", "make_grid", "to_pil",
    "check_sampling_flags", "prompt_tokens",
]  # fmt: skip


# --- model and sampler -------------------------------------------------------------------------------------------
def load_model(
    config_path: str | Path,
    ckpt: str | Path | None,
    embedding_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    ckpt_flag: str = "--ckpt",
) -> torch.nn.Module:
    """Build ``config.model``, load ``ckpt`` strictly and (if given) the textual-inversion embeddings; eval mode.

    The files are checked first; a missing one is an error naming its flag (``ckpt_flag`` is the script's name for
    the checkpoint flag). The released checkpoints' extra keys are dropped by name in ``load_model_from_config``.
    """
    from ldm.util import load_model_from_config

    config_file, ckpt_file, embedding_file = check_files(
        [("--config", config_path, True), (ckpt_flag, ckpt, True), ("--embedding_path", embedding_path, False)]
    )
    config = load_yaml(config_file, "--config")
    model_config = config.model if "model" in config else config
    if embedding_file and OmegaConf.select(model_config, "params.personalization_config") is None:
        example = CONFIGS_WITH_TOKENS.get(describe_config(config_file).family, CONFIGS_WITH_TOKENS["ldm"])
        raise UserError(
            f"--embedding_path given, but --config {config_path} builds no embedding manager; use a config with "
            f"personalization_config (e.g. {example})"
        )
    model = load_model_from_config(config, str(ckpt_file), strict=True)
    if embedding_file:
        model.embedding_manager.load(str(embedding_file))
    return model.to(device).eval()


def make_sampler(model: torch.nn.Module, name: str):
    """The sampler ``name`` of the registry (``ldm.models.diffusion.samplers.SAMPLERS``) for ``model``."""
    return samplers.make_sampler(model, name)


def steps_run(sampler_name: str, steps: int, num_timesteps: int) -> int:
    """How many steps the sampler really runs (DDIM 'uniform' runs more when S does not divide T)."""
    return samplers.steps_run(sampler_name, steps, num_timesteps)


def schedule_for_run(
    config: Any, sampler_name: str, steps: int, num_timesteps: int, log: bool = True,
    method: str | GuidanceMethod = "ae",
) -> tuple[Any, int]:  # fmt: skip
    """The method's config with its schedule made absolute for the steps the sampler really runs, and that count."""
    n_run = steps_run(sampler_name, steps, num_timesteps)
    used = get_method(method).for_steps(config, n_run)
    if log and isinstance(used, AttendExciteConfig):
        logger.info(
            "A&E over %d steps: thresholds %s, updates at steps < %d, up to %d refinement iterations, %s loss",
            n_run, used.thresholds, used.max_iter_to_alter, used.max_refinement_steps, used.loss_reduction,
        )  # fmt: skip
    elif log:
        logger.info("%s over %d steps: %s", get_method(method).title, n_run, used)
    return used, n_run


def guidance_choice(opt: Any, model_config: str | Path | None = None) -> GuidanceChoice:
    """The guidance method and settings a script's flags ask for (``ldm.guidance.flags.guidance_from_args``) with
    the presets of ``model_config``'s family (default: ``opt.config``)."""
    from ldm.ae_flags import model_family

    return guidance_from_args(opt, model_family(model_config or getattr(opt, "config", None)))


def add_sampling_guidance_args(parser: Any) -> None:
    """The A&E flags (``--ae_tokens``, ``--ae_config``, ``--ae_<field>``, ``--save_attention``) and the guidance
    method flags (``--guidance``, ``--guidance_config``, ``--g_<field>``) of the txt2img scripts."""
    add_attend_excite_args(parser)
    add_guidance_args(parser)


@contextlib.contextmanager
def sampling_scope(model: torch.nn.Module, precision: str = "full") -> Iterator[None]:
    """No gradients (A&E enables them itself), autocast for ``precision="autocast"`` (CUDA float16, CPU bfloat16,
    see ``ldm.precision``), the EMA weights."""
    device = next(model.parameters()).device
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(precision_scope(device, precision))
        if hasattr(model, "ema_scope"):
            stack.enter_context(model.ema_scope())
        yield


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


def prompt_tokens(model: torch.nn.Module, prompt: str) -> tuple[list[int], dict[int, str]]:
    """The prompt's token ids after the placeholder splice, and placeholder id -> string."""
    tokens = read_prompt_tokens(model, prompt)
    return list(tokens.ids), dict(tokens.placeholders)


def resolve_batch_tokens(
    model: torch.nn.Module, prompts: Sequence[str], spec: str | Sequence[str], log: bool = True
) -> tuple[list[tuple[tuple[int, ...], ...]], list[int], dict[str, dict]]:
    """The positions ``spec`` (``"cat,dog"``, ``"*,2"``: words and/or 1-based positions) excites in each prompt;
    ``spec`` may be a list with one spec per prompt.

    Positions are those the UNet attends to (after any multi-vector placeholder splice); a word split into several
    sub-tokens, or a multi-vector placeholder, is one group of positions (rules in ``guidance/tokens.py``).
    Returns per sample the position groups and the end-of-text position, and a per-prompt report (logged, saved).
    Raises ``ValueError`` showing the token table for a word not in a prompt.
    """
    specs = [spec] * len(prompts) if isinstance(spec, str) else list(spec)
    if len(specs) != len(prompts):
        raise ValueError(f"got {len(specs)} A&E token specs for {len(prompts)} prompts")
    groups, eots, report = [], [], {}
    tokenizer = model.cond_stage_model.tokenizer
    for prompt, prompt_spec in zip(prompts, specs, strict=True):
        tokens = read_prompt_tokens(model, prompt)
        resolved = resolve_ae_tokens(prompt_spec, tokens.ids, tokenizer, tokens.placeholders)
        if prompt not in report:
            excited = describe_groups(resolved, tokens.table)
            level = logging.INFO if log else logging.DEBUG
            logger.log(level, "Prompt %r tokens: %s", prompt, format_token_table(tokens.table))
            logger.log(level, "A&E excites positions: %s", excited)
            report[prompt] = {"tokens": dict(tokens.table), "excited": [list(g) for g in resolved]}
        groups.append(resolved)
        eots.append(tokens.eot)
    return groups, eots, report


@dataclass
class SampledBatch:
    """What :func:`sample_prompts` made for one batch of prompts."""

    images: torch.Tensor  # [n, 3, H, W] in [0, 1], on the CPU
    latents: torch.Tensor  # [n, C, h, w], the sampler's output
    cond: Any  # [n, 77, D], the prompts' conditioning (SDXL: {"c_crossattn": [..], "c_adm": [..]})
    guidance: Any = None  # the guidance object that ran (its ``records``), None without guidance
    token_groups: list | None = None  # per sample, the excited position groups
    report: dict = field(default_factory=dict)  # prompt -> {"tokens": table, "excited": groups}


def sample_prompts(
    model: torch.nn.Module,
    sampler: Any,
    prompts: Sequence[str],
    latent_shape: tuple[int, int, int],
    steps: int,
    scale: float,
    eta: float = 0.0,
    generator: Generators = None,
    x_T: torch.Tensor | None = None,
    ae_tokens: str | Sequence[str] = "",
    ae_config: AttendExciteConfig | None = None,
    on_maps: Callable[[StepMaps], None] | None = None,
    log_tokens: bool = True,
    guidance: str | GuidanceMethod | None = None,
    guidance_config: Any = None,
    size: Any = None,
    negative_prompt: str = "",
    decode_precision: str = "auto",
) -> SampledBatch:
    """One image per prompt: conditioning, ``uc`` = the empty prompt for CFG (skipped at ``scale`` 1), the guidance
    method ``guidance`` with ``guidance_config`` (schedule in absolute steps, see :func:`schedule_for_run`; default:
    Attend-and-Excite with ``ae_config`` when ``ae_tokens`` are given, else none) on the ``ae_tokens``
    words/positions, sampling from ``x_T`` (or noise from ``generator``), decoding and clamping to [0, 1]. ``eta``
    is ignored by DDPM. ``on_maps`` goes to the guidance object (each step's maps, for viewers).
    ``generator`` may be one per prompt (per-image noise, see ``sampler_base.noise_like``) and ``ae_tokens`` one
    spec per prompt; ``log_tokens`` False logs the token tables at DEBUG (the engine logs them once per run).
    SDXL: ``size`` is the micro-conditioning (``SizeConditioning``; default: the image size, not cropped), ``uc`` has
    zero text parts unless ``negative_prompt`` is given (every family uses ``negative_prompt`` as ``uc`` when given),
    and decoding runs in float32 (``decode_precision``, see :func:`decode_latents`).
    """
    from ldm.models.diffusion.ddpm_sampler import DDPMSampler

    n = len(prompts)
    specs = [ae_tokens] * n if isinstance(ae_tokens, str) else list(ae_tokens)
    method = get_method(guidance or ("ae" if any(spec.strip() for spec in specs) else "plain"))
    config = guidance_config if guidance_config is not None else (ae_config if method.name == "ae" else None)
    guidance_object, groups, report = None, None, {}
    with torch.no_grad():
        f = describe_model(model).first_stage_factor
        image_hw = (latent_shape[1] * f, latent_shape[2] * f)
        negatives = n * [negative_prompt] if negative_prompt else None
        uc = model.unconditional_conditioning(n, image_hw, size, negatives) if scale != 1.0 else None  # [n, 77, D]
        c = model.prompt_conditioning(list(prompts), image_hw, size)  # [n, 77, D] (SDXL: context and y)
        if method.name != "plain":
            if config is None:
                raise ValueError(f"guidance {method.name!r} without its settings (an {method.config_class.__name__})")
            groups, _, report = resolve_batch_tokens(model, prompts, specs, log=log_tokens)
            tokens = [read_prompt_tokens(model, p) for p in prompts]
            request = GuidanceRequest(model, config, list(prompts), tokens, groups, on_maps)
            guidance_object = method.build(request)
        kwargs: dict[str, Any] = {} if isinstance(sampler, DDPMSampler) else {"eta": eta}
        samples, _ = sampler.sample(
            steps, n, latent_shape, conditioning=c, x_T=x_T, verbose=False, generator=generator,
            unconditional_guidance_scale=scale, unconditional_conditioning=uc, latent_guidance=guidance_object,
            **kwargs,
        )  # fmt: skip
        x = decode_latents(model, samples, decode_precision).float()  # [n, 3, H, W] in [-1, 1]
    images = ((x + 1.0) / 2.0).clamp(0.0, 1.0).cpu()  # [n, 3, H, W] in [0, 1]
    return SampledBatch(images, samples, c, guidance_object, groups, report)


DECODE_PRECISIONS = ("auto", "full", "same")


def decode_latents(model: torch.nn.Module, z: torch.Tensor, decode_precision: str = "auto") -> torch.Tensor:
    """``decode_first_stage`` in float32 (``full``; ``auto`` for SDXL, whose autoencoder overflows in float16) or in
    the sampling precision (``same``; ``auto`` for the other families, as before)."""
    if decode_precision not in DECODE_PRECISIONS:
        raise UserError(f"--decode_precision {decode_precision!r}: use one of {', '.join(DECODE_PRECISIONS)}")
    full = decode_precision == "full" or (decode_precision == "auto" and describe_model(model).family == "sdxl")
    if not full:
        return model.decode_first_stage(z)
    first = model.first_stage_model
    if next(first.parameters()).dtype != torch.float32:
        logger.info("Decoding in float32: the autoencoder goes back to float32 weights (--decode_precision)")
        first.float()
    with torch.autocast(z.device.type, enabled=False):
        return model.decode_first_stage(z.float())


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def first_stage_factor(config_path: str, default: int = 8) -> int:
    """The autoencoder's downsampling factor f = 2^(len(ch_mult) - 1) read from the model config."""
    config = load_yaml(config_path, "--config")
    ch_mult = OmegaConf.select(config, "model.params.first_stage_config.params.ddconfig.ch_mult")
    return 2 ** (len(ch_mult) - 1) if ch_mult else default
