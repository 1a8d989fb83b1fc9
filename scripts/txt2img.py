#!/usr/bin/env python
"""Text-to-image with the LDM text2img model (BERT), optional textual-inversion embeddings and Attend-and-Excite.

    python scripts/txt2img.py --ckpt_path <model.ckpt> --embedding_path <embeddings.pt> \\
        --prompt "a photo of * and a dog" --ae_tokens "*,dog"

Outputs (as the original): <outdir>/samples/{0000}.png, the grid <outdir>/<prompt-with-dashes>.png, plus
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


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=str, nargs="?", default="a painting of a virus monster playing guitar")
    p.add_argument(
        "--from-file",
        type=str,
        help="prompts, one a line: --n_iter images each (the engine)",
    )
    p.add_argument("--outdir", type=str, nargs="?", default="outputs/txt2img-samples")
    p.add_argument("--ddim_steps", type=int, default=200, help="number of sampling steps (any --sampler)")
    add_sampler_args(p, aliases=True)  # --sampler NAME; --plms / --ddpm as before
    p.add_argument("--ddim_eta", type=float, default=0.0, help="eta 0.0 is deterministic DDIM")
    p.add_argument("--n_iter", type=int, default=1, help="sample this often")
    p.add_argument("--H", type=int, default=256, help="image height, in pixel space")
    p.add_argument("--W", type=int, default=256, help="image width, in pixel space")
    p.add_argument("--n_samples", type=int, default=4, help="how many samples per prompt (batch size)")
    p.add_argument("--scale", type=float, default=5.0, help="unconditional guidance scale")
    p.add_argument("--config", type=str, default="configs/latent-diffusion/txt2img-1p4B-eval_with_tokens.yaml")
    p.add_argument("--ckpt_path", "--ckpt", dest="ckpt_path", type=str,
                   default="/data/pretrained_models/ldm/text2img-large/model.ckpt")  # fmt: skip
    p.add_argument("--embedding_path", type=str, default=None, help="textual-inversion embeddings (.pt/.safetensors)")
    p.add_argument("--seed", type=int, default=42, help="seed of the starting noise")
    p.add_argument("--device", type=str, default=None, help="torch device (default: cuda if available)")
    p.add_argument("--precision", type=str, choices=PRECISIONS, default="full",
                   help="full | autocast (CUDA fp16, CPU bf16) | fp16 | bf16 (half-precision weights)")  # fmt: skip
    p.add_argument("--fixed_code", action="store_true", help="the same starting noise for every prompt")
    add_distributed_args(p)  # --from-file runs on the engine: one process per device
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (the first step of each shape compiles: slower start, faster steps)",
    )
    inference.add_sampling_guidance_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = get_parser().parse_args(argv)
    inference.check_sampling_flags(opt, ckpt_flag="--ckpt_path")  # before anything is loaded
    options = txt2img_run.SamplingOptions(
        outdir=opt.outdir, sampler=sampler_from_flags(opt), steps=opt.ddim_steps,
        eta=opt.ddim_eta, scale=opt.scale, n_iter=opt.n_iter, H=opt.H, W=opt.W, seed=opt.seed, layout="ldm",
        f=inference.first_stage_factor(opt.config),
        n_rows=opt.n_samples, ae_tokens=opt.ae_tokens, save_attention=opt.save_attention, extra_settings=vars(opt),
        precision=opt.precision, fixed_code=opt.fixed_code, guidance=opt.guidance,
    )  # fmt: skip
    if opt.from_file:
        run_from_file(opt, options, opt.ckpt_path, "--ckpt_path")
        return
    batches = txt2img_run.read_prompts(opt.prompt, None, opt.n_samples)
    device = inference.pick_device(opt.device)
    model = load_model_for(
        device, opt.config, opt.ckpt_path, opt.embedding_path, opt.precision, "--ckpt_path", compile_unet=opt.compile
    )
    txt2img_run.run_txt2img(model, batches, options, inference.guidance_choice(opt))


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
