#!/usr/bin/env python
"""The Attend-and-Excite explorer in the browser (needs the ``app`` extra: ``pip install -e ".[app]"``).

    python scripts/explore.py                  # the bundled ToyWorld model, http://127.0.0.1:7860
    python scripts/explore.py --config configs/stable-diffusion/v1-inference.yaml --ckpt sd-v1-4.ckpt \\
        --embedding_path learned_embeds.bin --ae_config configs/guidance/attend_and_excite.yaml

Binds to 127.0.0.1 unless --host says otherwise; --share asks Gradio for a public link.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOYWORLD_CONFIG = "configs/toyworld/txt2img-inference.yaml"
TOYWORLD_CKPT = "models/toyworld/txt2img.safetensors"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=str, default=None, help=f"model config (default: ToyWorld, {TOYWORLD_CONFIG})")
    p.add_argument(
        "--ckpt",
        "--ckpt_path",
        dest="ckpt",
        type=str,
        default=None,
        help=f"checkpoint (.ckpt/.safetensors; default with the ToyWorld config: {TOYWORLD_CKPT})",
    )
    p.add_argument(
        "--ae_config",
        type=str,
        default=None,
        help="the A&E preset shown first (default: the model family's, from its description)",
    )
    p.add_argument("--embedding_path", type=str, default=None, help="textual-inversion embeddings, any format")
    p.add_argument("--prompt", type=str, default="", help="the prompt the page starts with")
    p.add_argument("--steps", type=int, default=None, help="initial steps (default: 25 for ToyWorld, else 50)")
    p.add_argument("--scale", type=float, default=None, help="initial scale (default: 3 ToyWorld, 5 SDXL, else 7.5)")
    p.add_argument("--seed", type=int, default=42, help="initial seed")
    p.add_argument("--device", type=str, default=None, help="torch device (default: cuda if available)")
    p.add_argument("--display_size", type=int, default=256, help="small images are enlarged to about this width")
    p.add_argument("--host", type=str, default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    return p


def main(argv: list[str] | None = None) -> None:
    from ldm.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    opt = get_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('scripts/explore.py needs Gradio: pip install -e ".[app]"') from None
    from ldm.explorer.app import build_app, check_port, launch
    from ldm.explorer.session import Explorer
    from ldm.validation import check_scale

    check_port(opt.host, opt.port)  # before the model loads: a busy port is one error line, with a free one named
    if opt.scale is not None:
        check_scale(opt.scale)

    toyworld = opt.config is None
    config = opt.config or str(REPO / TOYWORLD_CONFIG)
    if opt.ckpt is None and not toyworld:
        raise UserError("--ckpt is required with --config (the checkpoint of that model)")
    ckpt = opt.ckpt or str(REPO / TOYWORLD_CKPT)
    from ldm.models.description import describe_config

    # the family's (or the toy's) A&E preset: ToyWorld 1's own, SD 2's, SDXL's, else the official one
    ae_config = opt.ae_config or str(REPO / "configs" / describe_config(config).defaults.ae_preset)
    explorer = Explorer.load(config, ckpt, ae_config, opt.embedding_path, opt.device)
    settings = explorer.default_settings(opt.seed, opt.steps, opt.scale)  # the model description's defaults
    demo = build_app(explorer, settings, prompt=opt.prompt, display_size=opt.display_size)
    launch(demo, host=opt.host, port=opt.port, share=opt.share)


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
