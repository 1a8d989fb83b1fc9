"""The txt2img scripts' run (``scripts/txt2img.py``, ``scripts/stable_txt2img.py`` with ``--prompt``): batches,
``n_iter``, and the samples, grids, optional attention pictures and a ``settings-NNNN.json`` of everything used (one
per run, numbered). The images come from :func:`ldm.inference.sample_prompts`; the scripts only parse flags.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ldm.errors import MissingFileError, UserError
from ldm.guidance import get_method
from ldm.guidance.attend_excite.config import AttendExciteConfig, display_config
from ldm.guidance.attend_excite.maps import capture_token_maps
from ldm.guidance.flags import GuidanceChoice
from ldm.guidance.tokens import prompt_tokens as read_prompt_tokens
from ldm.guidance.visualize import render_attention
from ldm.inference import make_grid, make_sampler, sample_prompts, sampling_scope, schedule_for_run, to_pil
from ldm.models.diffusion.sampler_base import select_cond
from ldm.outputs import RunFolder

logger = logging.getLogger(__name__)

__all__ = ["SamplingOptions", "run_txt2img", "attention_picture", "read_prompts"]


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
    size: Any = None  # SDXL's SizeConditioning (None: the image size, not cropped)
    negative_prompt: str = ""
    decode_precision: str = "auto"
    guidance: str | None = None  # the method (None: "ae" with ae_tokens, else "plain")

    @property
    def method(self) -> str:
        return self.guidance or ("ae" if self.ae_tokens.strip() else "plain")


def run_txt2img(
    model: torch.nn.Module,
    batches: list[list[str]],
    opts: SamplingOptions,
    guidance: AttendExciteConfig | GuidanceChoice,
) -> dict[str, Any]:
    """Sample every batch of prompts ``n_iter`` times and write the outputs; returns the settings written.

    ``guidance``: the method and its settings (an ``AttendExciteConfig`` alone: A&E, used when ``opts.ae_tokens``).
    Everything is written through :class:`ldm.outputs.RunFolder`: inside ``opts.outdir``, atomically, under numbers
    claimed exclusively after what the folder already holds (samples, grids and ``settings-NNNN.json``), so a rerun
    keeps the earlier record and two runs into one folder at once keep all of each other's; ``samples`` in the
    settings lists the numbers this run wrote.
    """
    if not isinstance(guidance, GuidanceChoice):
        guidance = GuidanceChoice(get_method(opts.method if opts.method != "plain" else "ae"), guidance)
    method = guidance.method if opts.method != "plain" else get_method("plain")
    device = next(model.parameters()).device
    out_folder = RunFolder(opts.outdir, opts.layout)
    if opts.save_attention and not opts.ae_tokens.strip():
        raise ValueError("--save_attention needs --ae_tokens (the tokens whose maps to show)")
    out_folder.prepare()
    sampler = make_sampler(model, opts.sampler)
    used, n_run = schedule_for_run(guidance.config, opts.sampler, opts.steps, model.num_timesteps,
                                   log=method.name != "plain", method=guidance.method)  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    latent_shape = (opts.C, opts.H // opts.f, opts.W // opts.f)
    batch_size = len(batches[0])
    start_code = None
    if opts.fixed_code:
        start_code = torch.randn((batch_size, *latent_shape), generator=generator, device=device)
    settings: dict[str, Any] = {"options": _jsonable(dataclasses.asdict(opts)), "attend_and_excite": None,
                                "prompts": {}}  # fmt: skip
    if method.name == "ae":
        settings["attend_and_excite"] = dataclasses.asdict(used) | {"steps_run": n_run}
    if method.name != "plain":
        settings["guidance"] = {"method": method.name, "settings": dataclasses.asdict(used), "steps_run": n_run}
    base_count = out_folder.next_sample_index()
    settings["first_sample"] = base_count
    written: list[int] = []  # the numbers this run claimed (another run into the same folder takes others)
    all_samples: list[torch.Tensor] = []
    with sampling_scope(model, opts.precision):
        for _ in tqdm(range(opts.n_iter), desc="Sampling"):
            for prompts in tqdm(batches, desc="data"):
                x_T = start_code[: len(prompts)] if start_code is not None else None
                out = sample_prompts(
                    model, sampler, prompts, latent_shape, opts.steps, opts.scale, eta=opts.eta, generator=generator,
                    x_T=x_T, ae_tokens=opts.ae_tokens, guidance=method, guidance_config=used, size=opts.size,
                    negative_prompt=opts.negative_prompt, decode_precision=opts.decode_precision,
                )  # fmt: skip
                settings["prompts"].update(out.report)
                for k, image in enumerate(out.images):
                    if not opts.skip_save:
                        base_count = out_folder.save_sample(to_pil(image), base_count, opts.save_attention)
                    if opts.save_attention:
                        shown = display_config(used)
                        cond_k = select_cond(out.cond, slice(k, k + 1))  # a tensor, or SDXL's dict
                        picture = attention_picture(model, out.latents[k : k + 1], cond_k, out.token_groups[k],
                                                    prompts[k], image, shown)  # fmt: skip
                        base_count = out_folder.save_attention(picture, base_count)
                    if not opts.skip_save or opts.save_attention:
                        written.append(base_count)
                    base_count += 1
                all_samples.append(out.images)
    if not opts.skip_grid and all_samples:
        grid = make_grid(torch.cat(all_samples), nrow=opts.n_rows or batch_size)
        grid_path = out_folder.save_grid(to_pil(grid), batches[0][0])
        settings["grid"] = grid_path.name
    if written:
        settings["first_sample"], settings["samples"] = written[0], written
    settings["extra"] = opts.extra_settings
    out_folder.save_settings(settings)
    logger.info("Samples are in %s", opts.outdir)
    return settings


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def attention_picture(
    model: torch.nn.Module,
    z: torch.Tensor,
    c: Any,
    groups: tuple,
    prompt: str,
    image: torch.Tensor,
    config: AttendExciteConfig,
) -> Image.Image:
    """One conditional pass on the final latent at t=1; each excited token's smoothed map over the image."""
    t = torch.ones(1, dtype=torch.long, device=z.device)
    cond = c.float() if isinstance(c, torch.Tensor) else c
    maps = capture_token_maps(model, z.float(), t, cond, [groups], config)[0]  # [K, r, r]
    names = dict(read_prompt_tokens(model, prompt).table)
    labels = [" ".join(dict.fromkeys(names[p] for p in g)) for g in groups]
    return render_attention(to_pil(image), maps, labels)


def read_prompts(prompt: str, from_file: str | None, batch_size: int) -> list[list[str]]:
    """Batches of prompts: ``batch_size`` copies of ``prompt``, or the file's lines in chunks of ``batch_size``."""
    if not from_file:
        return [batch_size * [prompt]]
    path = Path(from_file)
    if not path.is_file():
        raise MissingFileError(f"--from-file {from_file}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"--from-file {from_file}: not a UTF-8 text file; give a file of prompts, one a line") from err
    if "\0" in text:
        raise UserError(f"--from-file {from_file}: not a text file (it holds binary data)")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--from-file {from_file}: no prompts in the file")
    return [lines[i : i + batch_size] for i in range(0, len(lines), batch_size)]
