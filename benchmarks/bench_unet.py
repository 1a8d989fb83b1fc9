"""SD v1 UNet forward: scaled_dot_product_attention path vs the explicit-softmax path (random weights).

Prints time and peak-memory ratios (SDPA / explicit) measured in one process, batch 1 and 2, 64x64 latent.
Target: SDPA at most 0.8x the explicit path's time, never more memory.
Usage: python benchmarks/bench_unet.py [--batch_sizes 1 2] [--repeats 2] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_memory, pick_device, timed  # noqa: E402

from ldm.modules.attention import CrossAttention  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def set_sdpa(unet: torch.nn.Module, enabled: bool) -> None:
    for module in unet.modules():
        if isinstance(module, CrossAttention):
            module.use_sdpa = enabled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="latent side")
    parser.add_argument("--config", default=str(REPO / "configs/stable-diffusion/v1-inference.yaml"))
    args = parser.parse_args()
    device = pick_device()
    cfg = OmegaConf.load(args.config).model.params.unet_config
    cfg.params.use_checkpoint = False
    unet = instantiate_from_config(cfg).to(device).eval()
    ctx_dim = cfg.params.context_dim
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("batch | explicit s | sdpa s | time ratio | explicit MiB | sdpa MiB | memory ratio")
    for bs in args.batch_sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 4, args.size, args.size, generator=gen).to(device)
        t = torch.full((bs,), 500, dtype=torch.long, device=device)
        c = torch.randn(bs, 77, ctx_dim, generator=gen).to(device)
        results = {}
        outputs = {}
        for name, sdpa in (("explicit", False), ("sdpa", True)):
            set_sdpa(unet, sdpa)
            with torch.no_grad():
                unet(x, t, context=c)  # warm-up
                with peak_memory(device) as mem:
                    outputs[name] = unet(x, t, context=c)
                seconds = timed(partial(unet, x, t, context=c), device, args.repeats)
            results[name] = (seconds, mem["peak"] / 2**20)
        (te, me), (ts, ms) = results["explicit"], results["sdpa"]
        diff = float((outputs["sdpa"] - outputs["explicit"]).abs().max())
        print(
            f"{bs:5d} | {te:10.2f} | {ts:6.2f} | {ts / te:10.2f} | {me:12.0f} | {ms:8.0f} | {ms / max(me, 1e-9):12.2f}"
        )
        print(f"      max |sdpa - explicit| = {diff:.2e}")


if __name__ == "__main__":
    main()
