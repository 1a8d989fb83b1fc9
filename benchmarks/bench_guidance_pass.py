#!/usr/bin/env python
"""The guidance pass through the model's own denoising call (the seam) against the bare-UNet call it replaced.

One A&E guided step (one truncated pass with gradient and its backward) per round, both ways on the same model and
inputs, interleaved rounds in one process; prints the median time of each and their ratio, and checks that both give
the same latent. The seam adds the conditioning wrapper's dict and concatenation around the same UNet call.

    python benchmarks/bench_guidance_pass.py                       # ToyWorld 2 model, 64 px, batch 2
    python benchmarks/bench_guidance_pass.py --config configs/stable-diffusion/v1-inference.yaml --random --size 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ldm.guidance.attend_excite import AttendAndExcite, AttendExciteConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/toyworld2/txt2img-inference.yaml"))
    p.add_argument("--ckpt", default=str(REPO / "models/toyworld2/txt2img.safetensors"))
    p.add_argument("--random", action="store_true", help="random weights (no --ckpt), e.g. for SD v1 size")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--attention_res", type=int, default=16)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    from ldm.inference import load_model
    from ldm.models.description import describe_config
    from ldm.util import instantiate_from_config

    if args.random:
        model = instantiate_from_config(OmegaConf.load(args.config).model).eval()
    else:
        model = load_model(args.config, args.ckpt)
    d = describe_config(args.config)
    side = args.size // d.first_stage_factor
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, d.channels, side, side, generator=g)
    context = torch.randn(args.batch, 77, d.context_dim, generator=g)
    t = torch.full((args.batch,), 700)
    cfg = AttendExciteConfig(token_indices=(2, 5), attention_res=args.attention_res, max_iter_to_alter=1,
                             thresholds={}, schedule_steps=None)  # fmt: skip
    ways = {"model.apply_model (seam)": model, "bare UNet (before)": model.model.diffusion_model}
    times: dict[str, list[float]] = {k: [] for k in ways}
    outs = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, target in ways.items():
                start = time.perf_counter()
                outs[name] = AttendAndExcite(target, cfg)(x, t, 0, 50, context)
                times[name].append(time.perf_counter() - start)
    a, b = (statistics.median(v) for v in times.values())
    same = torch.equal(*outs.values())
    print(f"median of {args.rounds} interleaved rounds, batch {args.batch}, {args.size} px, threads "
          f"{torch.get_num_threads()}:")  # fmt: skip
    for name, v in times.items():
        print(f"  {name}: {statistics.median(v) * 1000:.1f} ms")
    print(f"  ratio seam / before: {a / b:.3f}; same latent: {same}")


if __name__ == "__main__":
    main()
