#!/usr/bin/env python
"""Textual Inversion's CLIP scores for a learned concept (reference-spec 1.9, fixed: the results are printed and
written to ``--out_dir`` instead of crashing on an undefined ``opt.out_dir``).

Generates ``--n_samples`` images of ``--prompt`` (DDIM, eta 0, CFG ``--scale``), then reports
- image similarity: mean CLIP cosine between the generated images and the training images of ``--data_dir``
  (reconstruction), and
- text similarity: mean CLIP cosine between the generated images and the prompt with ``*`` removed (editability).

    python scripts/evaluate_model.py --prompt "a photo of *" --ckpt_path models/ldm/text2img-large/model.ckpt \\
        --embedding_path logs/<run>/checkpoints/embeddings.pt --data_dir datasets/cat_statue \\
        --clip_model /models/clip-vit-base-patch32 --out_dir outputs/eval/cat_statue

With ``--gen_dir DIR`` the images in DIR are scored instead (no diffusion model is loaded). The images go to
``--out_dir/samples`` (a rerun with the same settings keeps them and makes only the missing ones); with ``--no_save``
to a temporary folder inside ``--out_dir`` that is removed after scoring: nothing else is ever deleted. A rerun never
replaces an earlier ``clip_similarity.json``: its record is ``clip_similarity-0001.json``, ``-0002`` ...
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ldm import engine, inference  # noqa: E402
from ldm.errors import UserError  # noqa: E402
from ldm.evaluation.clip import CLIPFeatureExtractor, resolve_clip_folder  # noqa: E402
from ldm.evaluation.evaluators import evaluate_inversion, strip_placeholder  # noqa: E402
from ldm.evaluation.generate import add_size_args, latent_shape  # noqa: E402
from ldm.evaluation.images import image_folder_files, load_images  # noqa: E402
from ldm.outputs import ensure_folder, save_record, text_writer  # noqa: E402
from ldm.precision import PRECISIONS  # noqa: E402
from ldm.sampler_flags import add_sampler_args, sampler_from_flags  # noqa: E402

DEFAULT_CONFIG = "configs/latent-diffusion/txt2img-1p4B-eval_with_tokens.yaml"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompt", required=True, help="prompt with the placeholder, e.g. 'a photo of *'")
    p.add_argument("--ckpt_path", help="diffusion model checkpoint (.ckpt/.safetensors)")
    p.add_argument("--embedding_path", help="learned embeddings (embeddings.pt / .safetensors)")
    p.add_argument("--data_dir", required=True, help="folder of the training images of the concept")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"model config (default {DEFAULT_CONFIG})")
    p.add_argument("--n_samples", type=int, default=64, help="images to generate (default 64)")
    p.add_argument("--ddim_steps", type=int, default=50, help="sampling steps (default 50)")
    add_sampler_args(p)
    p.add_argument("--scale", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--seed", type=int, default=42, help="base seed; image i has its own seed from (seed, prompt, i)")
    p.add_argument("--precision", choices=PRECISIONS, default="full",
                   help="full | autocast (CUDA fp16, CPU bf16) | fp16 | bf16 (half-precision weights)")  # fmt: skip
    p.add_argument("--batch_size", type=int, default=8, help="sampling and CLIP batch size (default 8)")
    add_size_args(p)
    p.add_argument("--out_dir", default="outputs/evaluation", help="where the JSON and samples go")
    p.add_argument("--clip_model", required=True, help="local Hugging Face CLIP folder (e.g. clip-vit-base-patch32)")
    p.add_argument("--placeholder", default="*", help="placeholder string removed for the text score (default *)")
    p.add_argument(
        "--data_size",
        type=int,
        default=256,
        help="resize training images to NxN (bicubic) as the TI dataset does; 0 keeps their size (default 256)",
    )
    p.add_argument("--gen_dir", help="score the images in this folder instead of generating")
    p.add_argument("--no_save", action="store_true",
                   help="keep no images: sample into a temporary folder in out_dir, removed after scoring")  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    engine.add_distributed_args(p)
    tokens_help = "sample with Attend-and-Excite on these words/positions (e.g. '*'); empty: plain sampling"
    inference.add_attend_excite_args(p, tokens_help=tokens_help, save_attention=False)
    inference.add_guidance_args(p)  # --guidance NAME: sample with another registered method (its --g_<field> flags)
    return p


def generate_samples(args: argparse.Namespace, out_dir: Path) -> tuple[list[Path], Path] | None:
    """The ``--n_samples`` images of ``--prompt`` as ``NNNN.png`` in ``out_dir/samples`` (with ``--no_save``: in a
    new temporary folder ``out_dir/.samples-*``), on the engine (one process per device; images that exist are kept).
    Returns their paths and the folder on rank 0 once every rank is done, None on the other ranks."""
    options = engine.distributed_options(args)
    fabric = engine.launch(options)
    samples: Path | str | None = out_dir / "samples"
    if args.no_save:  # rank 0 makes the folder, every rank writes into it
        made = tempfile.mkdtemp(prefix=".samples-", dir=out_dir) if fabric.global_rank == 0 else None
        samples = engine.broadcast_plan(fabric, made)
    samples = Path(samples)
    try:
        return _generate(args, fabric, options, samples)
    except BaseException:
        if args.no_save and fabric.global_rank == 0:  # the temporary folder this run made goes with it
            shutil.rmtree(samples, ignore_errors=True)
        raise


def _generate(
    args: argparse.Namespace, fabric: Any, options: engine.DistributedOptions, samples: Path
) -> tuple[list[Path], Path] | None:
    choice = inference.guidance_choice(args)
    items = engine.make_items(samples, [args.prompt], args.n_samples, [choice.name], args.seed,
                              path_of=lambda p, i, m: f"{i:04}.png", ae_tokens_of=lambda p: args.ae_tokens)  # fmt: skip
    model = engine.load_model_for(fabric.device, args.config, args.ckpt_path, args.embedding_path, args.precision,
                           "--ckpt_path")  # fmt: skip
    shape = latent_shape(model, inference.first_stage_factor(args.config), args.H, args.W)
    settings = engine.EngineSettings(
        latent_shape=shape, sampler=sampler_from_flags(args), steps=args.ddim_steps, scale=args.scale,
        batch_size=args.batch_size,
        precision=args.precision, ae_config=choice.config if choice.name == "ae" else None,
        guidance={choice.name: choice.config} if choice.name not in ("plain", "ae") else None,
    )  # fmt: skip
    record = {"prompt": args.prompt, "config": args.config, "ckpt_path": args.ckpt_path,
              "embedding_path": args.embedding_path, "seed": args.seed}  # fmt: skip
    result = engine.run_items(fabric, model, items, settings, samples, record, options.rank_timeout)
    del model
    if fabric.device.type == "cuda":
        torch.cuda.empty_cache()
    return ([it.path for it in items], samples) if result.is_rank_zero else None


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = inference.pick_device(args.device)
    out_dir = Path(args.out_dir)

    # Check every input before the slow steps.
    clip_folder = resolve_clip_folder(args.clip_model)
    source_files = image_folder_files(args.data_dir, "--data_dir")
    if not strip_placeholder(args.prompt, args.placeholder):
        raise UserError(f"--prompt {args.prompt!r} has no words besides the placeholder {args.placeholder!r}")

    if args.gen_dir:
        generated = load_images(image_folder_files(args.gen_dir, "--gen_dir"))
    else:
        if not args.ckpt_path:
            raise UserError("--ckpt_path is required to generate images (or pass --gen_dir to score existing ones)")
        if args.placeholder in args.prompt and not args.embedding_path:
            raise UserError(f"--prompt contains {args.placeholder!r} but no --embedding_path was given")
        inference.check_sampling_flags(args, ckpt_flag="--ckpt_path")  # before the model is loaded
        sampler_from_flags(args)  # a conflicting --ddim_eta, before the model is loaded
        ensure_folder(out_dir, "--out_dir")
        done = generate_samples(args, out_dir)
        if done is None:  # a rank other than 0 of a multi-process run: rank 0 scores
            return {}
        paths, samples = done
        try:
            generated = load_images(paths)
        finally:
            if args.no_save:  # the temporary folder this run made, nothing else
                shutil.rmtree(samples)
    source = load_images(source_files, size=args.data_size or None)
    extractor = CLIPFeatureExtractor.from_pretrained(clip_folder, device=device, batch_size=args.batch_size)
    result = evaluate_inversion(extractor, generated, source, args.prompt, args.placeholder)
    result.update(
        {
            "clip_model": str(clip_folder),
            "data_dir": str(args.data_dir),
            "gen_dir": args.gen_dir,
            "ckpt_path": args.ckpt_path,
            "embedding_path": args.embedding_path,
            "config": None if args.gen_dir else args.config,
            "n_samples": len(generated),
            "ddim_steps": None if args.gen_dir else args.ddim_steps,
            "scale": None if args.gen_dir else args.scale,
            "seed": None if args.gen_dir else args.seed,
            "image_size": None if args.gen_dir else list(generated[0].shape[-2:]),
        }
    )
    ensure_folder(out_dir, "--out_dir")
    out_file = save_record(text_writer(json.dumps(result, indent=2) + "\n"), out_dir / "clip_similarity.json")
    print(f"image similarity (reconstruction): {result['image_similarity']:.4f}")
    print(f"text similarity  (editability, {result['text']!r}): {result['text_similarity']:.4f}")
    print(f"wrote {out_file}")
    return result


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
