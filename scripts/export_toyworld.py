"""Export trained ToyWorld checkpoints as the shipped fp16 ``.safetensors`` files.

    python scripts/export_toyworld.py autoencoder logs/toyworld/<run>/checkpoints/last.ckpt \
        models/toyworld/autoencoder.safetensors
    python scripts/export_toyworld.py ldm logs/toyworld/<run>/checkpoints/last.ckpt models/toyworld/txt2img.safetensors

``autoencoder``: the AutoencoderKL state dict without the training loss (``loss.*``).
``ldm``: the full LatentDiffusion state dict (UNet, text encoder, first stage, ``scale_factor``); the UNet weights are
the EMA weights when the run kept an EMA (``model_ema.*``), and no ``model_ema.*`` entries are written, so the file
loads with ``use_ema: false`` (configs/toyworld/txt2img-inference.yaml).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.toyworld.export import autoencoder_state, ldm_state, to_fp16  # noqa: E402
from ldm.util import load_state_dict_file  # noqa: E402

logger = logging.getLogger("export_toyworld")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("autoencoder", "ldm"))
    parser.add_argument("ckpt", help="a Lightning checkpoint (.ckpt) or state-dict file")
    parser.add_argument("out", nargs="?", default=None, help="output .safetensors path")
    parser.add_argument("--no_ema", action="store_true", help="ldm: keep the raw (non-EMA) UNet weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from safetensors.torch import save_file

    if args.out is None:
        parser.error("give the output .safetensors path")
    state = load_state_dict_file(args.ckpt)  # weights_only; a Lightning .ckpt's state_dict
    state = autoencoder_state(state) if args.kind == "autoencoder" else ldm_state(state, use_ema=not args.no_ema)
    state = to_fp16(state)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {out}: use a .safetensors file name")
    from ldm.outputs import atomic_write

    meta = {"source": str(args.ckpt), "kind": args.kind}
    atomic_write(out, lambda tmp: save_file(state, tmp, metadata=meta))  # umask permissions (save_file: 0600)
    n = sum(v.numel() for v in state.values())
    logger.info("Wrote %s: %d tensors, %.2f M values, %.1f MB", out, len(state), n / 1e6, out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
