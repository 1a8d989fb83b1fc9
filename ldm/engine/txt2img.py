"""``--from-file`` of ``scripts/txt2img.py`` and ``scripts/stable_txt2img.py`` on the engine.

Every line of the file is a prompt; each gets ``--n_iter`` images (as the original, where a batch of ``--n_samples``
lines was sampled ``--n_iter`` times), sampled in batches of ``--n_samples`` over the processes Fabric starts.
Layout (deterministic, so a rerun skips what exists)::

    <outdir>/<method>/<prompt stem>/<index:05>.png          the images (method: plain, ae, syngen, ...; stem:
                                                            ldm.engine.items.prompt_stems)
    <outdir>/<method>/<prompt stem>/records/<index:05>.json with guidance: what it did for that image
    <outdir>/<method>/<prompt stem>.png                     a grid of the prompt's images (not with --skip_grid;
                                                            a rerun with other images: <prompt stem>-NNNN.png)
    <outdir>/settings-NNNN.json                             the run's options, guidance settings and token tables
    <outdir>/.engine/folders.json                           every prompt's folder name, kept when prompts are added
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ldm import inference, txt2img_run
from ldm.engine.distributed import distributed_options, launch
from ldm.engine.folders import prompt_folders
from ldm.engine.items import make_items
from ldm.engine.runner import STATE_DIR, EngineSettings, load_model_for, run_items
from ldm.evaluation.images import load_images
from ldm.outputs import RunFolder, ensure_folder, image_writer, inside, save_record

logger = logging.getLogger(__name__)

__all__ = ["read_prompt_lines", "run_from_file"]


def read_prompt_lines(from_file: str) -> list[str]:
    """The non-empty lines of ``--from-file`` (an error names the flag when the file is missing or empty)."""
    return [p for batch in txt2img_run.read_prompts("", from_file, 1) for p in batch]


def run_from_file(
    opt: argparse.Namespace, options: txt2img_run.SamplingOptions, ckpt: str, ckpt_flag: str
) -> dict[str, Any] | None:
    """Sample every prompt of ``opt.from_file`` on the engine; returns the settings written (rank 0) or None."""
    if options.skip_save:
        raise ValueError("--skip_save cannot be used with --from-file: the saved images are how a run resumes")
    if options.save_attention:
        raise ValueError("--save_attention is not available with --from-file; sample single prompts with --prompt")
    prompts = read_prompt_lines(opt.from_file)
    choice = inference.guidance_choice(opt)
    method = choice.name
    outdir = ensure_folder(options.outdir, "--outdir")
    dist = distributed_options(opt)
    fabric = launch(dist)
    stems = prompt_folders(fabric, outdir, outdir / STATE_DIR, prompts)
    items = make_items(
        outdir, prompts, options.n_iter, [method], options.seed,
        path_of=lambda p, i, m: Path(m) / stems[p] / f"{i:05}.png",
        ae_tokens_of=lambda p: options.ae_tokens,
        record_of=lambda p, i, m: Path(m) / stems[p] / "records" / f"{i:05}.json",
        fixed_code=options.fixed_code,
    )  # fmt: skip
    model = load_model_for(fabric.device, opt.config, ckpt, opt.embedding_path, options.precision, ckpt_flag,
                           compile_unet=getattr(opt, "compile", False))  # fmt: skip
    report: dict = {}
    if choice.active:  # every prompt's tokens, before the slow part (a word not in a prompt is an error)
        _, _, report = inference.resolve_batch_tokens(model, list(dict.fromkeys(prompts)), options.ae_tokens)
    settings = EngineSettings(
        latent_shape=(options.C, options.H // options.f, options.W // options.f), sampler=options.sampler,
        steps=options.steps, scale=options.scale, eta=options.eta, batch_size=max(1, opt.n_samples),
        precision=options.precision, ae_config=choice.config if method == "ae" else None,
        guidance={method: choice.config} if method not in ("plain", "ae") else None, size=options.size,
        negative_prompt=options.negative_prompt, decode_precision=options.decode_precision,
    )  # fmt: skip
    record = {"config": str(opt.config), "ckpt": str(ckpt), "embedding_path": opt.embedding_path,
              "seed": options.seed, "fixed_code": options.fixed_code}  # fmt: skip
    result = run_items(fabric, model, items, settings, outdir, record, dist.rank_timeout)
    if not result.is_rank_zero:
        return None
    folder = RunFolder(outdir, options.layout)
    if not options.skip_grid:
        for prompt in dict.fromkeys(prompts):
            images = torch.stack(load_images([it.path for it in items if it.prompt == prompt]))  # [n, 3, H, W]
            grid = inference.make_grid(images, nrow=options.n_rows or min(len(images), 8))
            grid_path = inside(outdir, Path(method) / f"{stems[prompt]}.png")  # a rerun's other grid: -NNNN
            save_record(image_writer(inference.to_pil(grid), grid_path), grid_path, outdir, keep_same=True)
    used = None
    if choice.active:
        used, n_run = inference.schedule_for_run(choice.config, options.sampler, options.steps, model.num_timesteps,
                                                 log=False, method=choice.method)  # fmt: skip
        used = dataclasses.asdict(used) | {"steps_run": n_run}
    written = {
        "options": dataclasses.asdict(options), "attend_and_excite": used if method == "ae" else None,
        "prompts": report,
        "engine": {"items": result.total, "skipped": result.skipped, "method": method,
                   "folders": {p: f"{method}/{stems[p]}" for p in stems}},
        "extra": options.extra_settings,
    }  # fmt: skip
    if choice.active:
        written["guidance"] = {"method": method, "settings": used}
    folder.save_settings(written)
    logger.info("Samples are in %s", outdir / method)
    return written
