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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.util import load_state_dict_file  # noqa: E402

logger = logging.getLogger("export_toyworld")


def autoencoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the loss module's entries (the inference config uses ``torch.nn.Identity``)."""
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def ldm_state(state: dict[str, torch.Tensor], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Swap the EMA shadow weights into ``model.*`` (LitEma names a parameter by its path with dots removed)."""
    out = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
    ema = {k[len("model_ema.") :]: v for k, v in state.items() if k.startswith("model_ema.")}
    ema.pop("decay", None)
    ema.pop("num_updates", None)
    if use_ema and ema:
        swapped = 0
        for key in list(out):
            if key.startswith("model."):
                shadow = key[len("model.") :].replace(".", "")
                if shadow in ema:
                    out[key] = ema[shadow]
                    swapped += 1
        logger.info("Used the EMA weights for %d UNet tensors", swapped)
        if swapped == 0:
            raise ValueError("the checkpoint has model_ema.* entries but none matches a model.* parameter")
    out = {k: v for k, v in out.items() if not k.startswith("first_stage_model.loss.")}
    return out


def to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors to fp16 (contiguous, as safetensors needs); integer buffers unchanged."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


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
