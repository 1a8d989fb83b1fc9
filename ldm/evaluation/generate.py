"""Sample images from a latent diffusion model for the evaluation scripts.

Kept as one small function so it can later be pointed at the shared sampling code. It follows the reference
evaluator (reference-spec 1.9, ``LDMCLIPEvaluator``): DDIM with eta 0, classifier-free guidance with the empty prompt
as unconditional input, decode, clamp.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

logger = logging.getLogger(__name__)


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def generate_images(
    model: torch.nn.Module,
    prompt: str,
    n_samples: int,
    ddim_steps: int,
    scale: float,
    seed: int,
    batch_size: int,
    latent_guidance: object | None = None,
) -> Tensor:
    """Generate ``n_samples`` images of ``prompt``; returns ``[N, 3, H, W]`` in [0, 1] on the CPU.

    One ``torch.Generator`` seeded with ``seed`` draws the starting noise of all batches, so a run is reproducible.
    ``latent_guidance`` (e.g. an Attend-and-Excite object) is handed to the sampler, which calls it at every step.
    """
    from ldm.models.diffusion.ddim import DDIMSampler

    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples ({n_samples}) and batch_size ({batch_size}) must be positive")
    device = _model_device(model)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    sampler = DDIMSampler(model)
    shape = [int(model.channels), int(model.image_size), int(model.image_size)]  # latent [C, h, w]
    ema = model.ema_scope() if hasattr(model, "ema_scope") else contextlib.nullcontext()
    extra = {} if latent_guidance is None else {"latent_guidance": latent_guidance}
    out: list[Tensor] = []
    with torch.no_grad(), ema:
        n_batches = (n_samples + batch_size - 1) // batch_size
        for b in tqdm(range(n_batches), desc=f"sampling {prompt!r}", leave=False):
            bs = min(batch_size, n_samples - b * batch_size)
            c = model.get_learned_conditioning(bs * [prompt])  # [bs, 77, D]
            uc = model.get_learned_conditioning(bs * [""]) if scale != 1.0 else None  # [bs, 77, D]
            samples, _ = sampler.sample(
                S=ddim_steps,
                batch_size=bs,
                shape=shape,
                conditioning=c,
                eta=0.0,
                x_T=None,
                unconditional_guidance_scale=scale,
                unconditional_conditioning=uc,
                verbose=False,
                generator=generator,
                **extra,
            )  # [bs, C, h, w]
            x = model.decode_first_stage(samples)  # [bs, 3, H, W] in [-1, 1]
            out.append(((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
    return torch.cat(out)  # [N, 3, H, W]


def word_token_indices(tokenizer: object, prompt: str, words: Sequence[str]) -> list[int]:
    """Positions (in ``tokenizer(prompt).input_ids``, special tokens included) of the first token of each word.

    Words are searched left to right, each after the previous match, so "a red car and a blue car" finds both cars.
    Raises ``ValueError`` naming the word when it is not in the prompt's tokens.
    """
    ids: list[int] = list(tokenizer(prompt)["input_ids"])
    indices: list[int] = []
    start = 0
    for word in words:
        word_ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
        if not word_ids:
            raise ValueError(f"word {word!r} has no tokens")
        found = next(
            (i for i in range(start, len(ids) - len(word_ids) + 1) if ids[i : i + len(word_ids)] == word_ids), None
        )
        if found is None:
            raise ValueError(f"word {word!r} not found in the tokens of prompt {prompt!r} (after position {start})")
        indices.append(found)
        start = found + len(word_ids)
    return indices


def check_file(flag: str, path: str | Path | None, required: bool = True) -> Path | None:
    """``Path(path)`` if the file exists; a clear ``FileNotFoundError`` naming ``flag`` otherwise."""
    if path is None:
        if required:
            raise FileNotFoundError(f"{flag} is required")
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    return p


def load_diffusion_model(
    config_path: str | Path,
    ckpt_path: str | Path,
    embedding_path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build ``config.model``, load ``ckpt_path`` and (if given) the textual-inversion embeddings; eval mode."""
    from omegaconf import OmegaConf

    from ldm.util import load_model_from_config

    config_file = check_file("--config", config_path)
    ckpt_file = check_file("--ckpt_path", ckpt_path)
    emb_file = check_file("--embedding_path", embedding_path, required=False)
    config = OmegaConf.load(config_file)
    model = load_model_from_config(config, str(ckpt_file))
    if emb_file is not None:
        manager = getattr(model, "embedding_manager", None)
        if manager is None:
            raise ValueError(
                f"--embedding_path given, but --config {config_file} builds no embedding manager; use a config with "
                "personalization_config (e.g. configs/latent-diffusion/txt2img-1p4B-eval_with_tokens.yaml)"
            )
        manager.load(str(emb_file))
    return model.to(device).eval()
