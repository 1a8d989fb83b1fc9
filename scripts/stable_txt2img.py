#!/usr/bin/env python
"""Text-to-image with Stable Diffusion v1 (CLIP), 2.x (OpenCLIP) or XL, optional textual-inversion embeddings and
Attend-and-Excite.

    python scripts/stable_txt2img.py --ckpt <sd-v1.ckpt> --prompt "a cat and a frog" --ae_tokens 2,5
    python scripts/stable_txt2img.py --config configs/stable-diffusion/v2-inference.yaml \
        --ckpt v2-1_512-ema-pruned.safetensors --prompt "a cat and a frog" --ae_tokens cat,frog
    python scripts/stable_txt2img.py --config configs/stable-diffusion/v2-inference-v.yaml \
        --ckpt v2-1_768-ema-pruned.safetensors --H 768 --W 768 --ae_tokens cat,frog --ae_attention_res 24

    python scripts/stable_txt2img.py --config configs/sdxl/sd_xl_base-inference.yaml \
        --ckpt sd_xl_base_1.0.safetensors --H 1024 --W 1024 --scale 5 --n_samples 1 --prompt "a cat and a frog" \
        --original_size 1024,1024 --crop_top_left 0,0 --target_size 1024,1024 --precision fp16

SDXL: --original_size / --crop_top_left / --target_size are its size conditioning (default: the image size, 0,0);
its autoencoder decodes in float32 unless --decode_precision same.

--ae_tokens words are read with the model's own tokenizer (OpenCLIP's for SD 2); without --ae_config an SD 2 model
gets configs/guidance/attend_and_excite_sd2.yaml (softmax_end: eot).

Outputs (as the original): <outdir>/samples/{00000}.png, grids <outdir>/<prompt-with-dashes>-{0000}.png, plus
<outdir>/settings-NNNN.json (one per run) and, with --save_attention, <outdir>/attention/{00000}.png.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ldm import inference, txt2img_run  # noqa: E402
from ldm.engine import add_distributed_args, load_model_for  # noqa: E402
from ldm.engine.txt2img import run_from_file  # noqa: E402
from ldm.precision import PRECISIONS  # noqa: E402
from ldm.sampler_flags import add_sampler_args, sampler_from_flags  # noqa: E402
from ldm.size_flags import add_size_args, size_conditioning  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar")
    p.add_argument("--outdir", type=str, nargs="?", default="outputs/txt2img-samples")
    p.add_argument("--skip_grid", action="store_true", help="do not save a grid, only individual samples")
    p.add_argument("--skip_save", action="store_true", help="do not save individual samples")
    p.add_argument("--ddim_steps", type=int, default=50, help="number of sampling steps (any --sampler)")
    add_sampler_args(p, aliases=True)  # --sampler NAME; --plms / --ddpm as before
    p.add_argument("--laion400m", action="store_true", help="use the LAION400M (LDM text2img-large) model")
    p.add_argument("--fixed_code", action="store_true", help="use the same starting code for all batches")
    p.add_argument("--ddim_eta", type=float, default=0.0, help="eta 0.0 is deterministic DDIM")
    p.add_argument("--n_iter", type=int, default=2, help="sample this often")
    p.add_argument("--H", type=int, default=512, help="image height, in pixel space")
    p.add_argument("--W", type=int, default=512, help="image width, in pixel space")
    p.add_argument("--C", type=int, default=None, help="latent channels (default: the config's)")
    p.add_argument("--f", type=int, default=None, help="downsampling factor (default: the config's)")
    p.add_argument("--n_samples", type=int, default=3, help="how many samples per prompt (batch size)")
    p.add_argument("--n_rows", type=int, default=0, help="rows in the grid (default: n_samples)")
    p.add_argument("--scale", type=float, default=7.5, help="unconditional guidance scale")
    p.add_argument(
        "--from-file",
        type=str,
        help="prompts, one a line: --n_iter images each (the engine)",
    )
    p.add_argument("--config", type=str, default="configs/stable-diffusion/v1-inference.yaml")
    p.add_argument("--ckpt", "--ckpt_path", dest="ckpt", type=str, default="models/ldm/stable-diffusion-v1/model.ckpt")
    p.add_argument("--seed", type=int, default=42, help="seed of the starting noise")
    p.add_argument("--precision", type=str, choices=PRECISIONS, default="autocast",
                   help="full | autocast (CUDA fp16, CPU bf16) | fp16 | bf16 (half-precision weights)")  # fmt: skip
    p.add_argument("--embedding_path", type=str, default=None, help="textual-inversion embeddings (.pt/.safetensors)")
    p.add_argument("--device", type=str, default=None, help="torch device (default: cuda if available)")
    add_distributed_args(p)  # --from-file runs on the engine: one process per device
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (the first step of each shape compiles: slower start, faster steps)",
    )
    inference.add_sampling_guidance_args(p)
    add_size_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = get_parser().parse_args(argv)
    if opt.laion400m:
        logging.info("Falling back to the LAION 400M model (LDM text2img-large)")
        opt.config = "configs/latent-diffusion/txt2img-1p4B-eval.yaml"
        opt.ckpt = "models/ldm/text2img-large/model.ckpt"
        opt.outdir = "outputs/txt2img-samples-laion400m"
    geometry = inference.check_sampling_flags(opt, ckpt_flag="--ckpt")  # before anything is loaded
    options = txt2img_run.SamplingOptions(
        outdir=opt.outdir, sampler=sampler_from_flags(opt), steps=opt.ddim_steps,
        eta=opt.ddim_eta, scale=opt.scale, n_iter=opt.n_iter, H=opt.H, W=opt.W, C=geometry.channels,
        f=geometry.first_stage_factor, seed=opt.seed,
        fixed_code=opt.fixed_code, skip_grid=opt.skip_grid, skip_save=opt.skip_save, n_rows=opt.n_rows,
        precision=opt.precision, layout="sd", ae_tokens=opt.ae_tokens, save_attention=opt.save_attention,
        extra_settings=vars(opt), size=size_conditioning(opt, geometry.family), negative_prompt=opt.negative_prompt,
        decode_precision=opt.decode_precision, guidance=opt.guidance,
    )  # fmt: skip
    if opt.from_file:
        run_from_file(opt, options, opt.ckpt, "--ckpt")
        return
    batches = txt2img_run.read_prompts(opt.prompt, None, opt.n_samples)
    device = inference.pick_device(opt.device)
    model = load_model_for(
        device, opt.config, opt.ckpt, opt.embedding_path, opt.precision, "--ckpt", compile_unet=opt.compile
    )
    txt2img_run.run_txt2img(model, batches, options, inference.guidance_choice(opt, model_config=opt.config))


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
