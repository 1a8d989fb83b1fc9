#!/usr/bin/env python
"""Cost of Attend-and-Excite, ours against the straightforward implementation (one process, same seeds).

(a) tiny model (the goldens' tiny_sd), end to end, official 50-step schedule, DDIM, CFG 7.5: plain sampling, A&E
    without refinement, A&E with every refinement forced to its maximum (threshold 1.0), and the straightforward
    version of each (full-UNet guidance pass, a conditional pass on every step, two unused no-grad forwards per
    refinement iteration, as the official code runs).
(b) the SD v1 UNet with random weights at a 64x64 latent: one plain step, one guided step and one refinement
    iteration, ours and straightforward, and the 50-step ratios composed from them (25 updates; 0 or 3 x 20
    refinement iterations), with the peak memory (CUDA only).

    python benchmarks/bench_attend_excite.py --part a      # seconds on a CPU
    python benchmarks/bench_attend_excite.py --part b      # minutes on a CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ldm.guidance.attend_excite.config import AttendExciteConfig, scale_schedule  # noqa: E402
from ldm.guidance.attend_excite.maps import max_attention_per_token  # noqa: E402
from ldm.guidance.attend_excite.method import AttendAndExcite  # noqa: E402
from ldm.guidance.capture import blocks_at_resolution  # noqa: E402
from ldm.modules.attention_control import AttentionStore, register_attention_controller  # noqa: E402

INDICES = (2, 5)


class Straightforward:
    """The official loop (deliberate duplicate of the oracle in tests/test_attend_excite.py, plus its waste):
    full UNet, batch 1 per sample, a conditional pass on every step, two unused forwards per refinement iteration."""

    def __init__(self, unet, cfg: AttendExciteConfig, uc: torch.Tensor):
        self.unet, self.cfg, self.uc = unet, cfg, uc
        self.store = AttentionStore([cfg.attention_res])

    def loss(self, z, t, c):
        self.store.reset()
        with register_attention_controller(self.unet, self.store):
            self.unet(z, t, context=c)
        maps = self.store.aggregate(1, self.cfg.attention_res)[0]
        return (1 - max_attention_per_token(maps, self.cfg.token_indices, self.cfg)).max().clamp_min(0)

    def __call__(self, x, t, i, n, cond):
        cfg, out = self.cfg, []
        alpha = cfg.scale_factor * float(np.sqrt(np.linspace(1.0, 0.5, n)[i]))
        with torch.enable_grad():
            for b in range(x.shape[0]):
                tb, cb = t[b : b + 1], cond[b : b + 1]
                z = x[b : b + 1].clone().requires_grad_(True)
                loss = self.loss(z, tb, cb)
                if i in cfg.thresholds and loss > 1 - cfg.thresholds[i]:
                    for _ in range(cfg.max_refinement_steps):
                        z = z.detach().requires_grad_(True)
                        loss = self.loss(z, tb, cb)
                        if loss != 0:
                            z = z - alpha * torch.autograd.grad(loss, z)[0]
                        with torch.no_grad():  # unused, as in the official code
                            self.unet(z, tb, context=self.uc[b : b + 1])
                            self.unet(z, tb, context=cb)
                        if loss <= max(0.0, 1 - cfg.thresholds[i]):
                            break
                    z = z.detach().requires_grad_(True)
                    loss = self.loss(z, tb, cb)
                if i < cfg.max_iter_to_alter and loss != 0:
                    z = z - alpha * torch.autograd.grad(loss, z)[0]
                out.append(z.detach())
        return torch.cat(out)


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def part_a(steps: int = 50, batch: int = 1) -> None:
    from omegaconf import OmegaConf

    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.util import load_model_from_config

    golden = REPO / "tests" / "fixtures" / "golden"
    model = load_model_from_config(
        OmegaConf.load(REPO / "configs/tests/golden_tiny_sd.yaml"), golden / "weights/tiny_sd.ckpt"
    ).eval()
    from safetensors.torch import load_file

    inp = load_file(str(golden / "ae/tiny_sd/inputs.safetensors"))
    c, uc, x_T = inp["c"][:batch], inp["uc"][:batch], inp["x_T"][:batch]
    unet = model.model.diffusion_model
    base = scale_schedule(AttendExciteConfig(token_indices=INDICES), steps)
    configs = {
        "no refinement": AttendExciteConfig(**{**base.__dict__, "thresholds": {}}),
        "max refinement": AttendExciteConfig(**{**base.__dict__, "thresholds": dict.fromkeys(base.thresholds, 1.0)}),
    }

    def run(guidance):
        DDIMSampler(model).sample(steps, batch, (4, 32, 32), conditioning=c, x_T=x_T, eta=0.0, verbose=False,
                                  unconditional_guidance_scale=7.5, unconditional_conditioning=uc,
                                  latent_guidance=guidance)  # fmt: skip

    plain = timed(lambda: run(None))
    print(f"(a) tiny_sd, {steps} DDIM steps, batch {batch}: plain {plain:.2f} s")
    for label, cfg in configs.items():
        ours = timed(lambda cfg=cfg: run(AttendAndExcite(unet, cfg)))
        straight = timed(lambda cfg=cfg: run(Straightforward(unet, cfg, uc)))
        print(f"    A&E {label}: ours {ours:.2f} s ({ours / plain:.2f}x plain), straightforward {straight:.2f} s "
              f"({straight / plain:.2f}x plain); speed-up {straight / ours:.2f}x")  # fmt: skip


def part_b(latent: int = 64) -> None:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
    ).to(device).eval()  # fmt: skip
    for p in unet.parameters():
        p.requires_grad_(False)
        torch.nn.init.normal_(p, std=0.02)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, 4, latent, latent, generator=g, device=device)
    c = torch.randn(1, 77, 768, generator=g, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    cfg = AttendExciteConfig(token_indices=INDICES, thresholds={}, max_iter_to_alter=1, schedule_steps=None)
    stop = blocks_at_resolution(unet, (latent, latent), cfg.attention_res)[-1]
    print(f"(b) SD v1 UNet (random weights), {latent}x{latent} latent, {device}; guidance pass stops after {stop}")

    def peak(fn):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(fn)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        return seconds, mem

    def plain_step():
        with torch.no_grad():
            unet(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([c, c]))

    def ours_step():
        AttendAndExcite(unet, cfg)(x, t, 0, 50, c)

    straight = Straightforward(unet, cfg, c)

    def straight_step():
        straight(x, t, 0, 50, c)

    def straight_refine():
        with torch.enable_grad():
            z = x.clone().requires_grad_(True)
            torch.autograd.grad(straight.loss(z, t, c), z)
        with torch.no_grad():
            unet(x, t, context=c)
            unet(x, t, context=c)

    def straight_nograd_pass():  # the official conditional pass on steps >= 25 (graph built, no backward)
        with torch.enable_grad():
            straight.loss(x.clone().requires_grad_(True), t, c)

    steps = {"plain": plain_step, "ours": ours_step, "straight": straight_step}
    steps |= {"straight_refine": straight_refine, "straight_idle": straight_nograd_pass}
    r = {name: peak(fn) for name, fn in steps.items()}
    for name, (s, m) in r.items():
        print(f"    {name:16s} {s * 1000:9.1f} ms   peak {m:.2f} GiB")
    p, o, s, sr, si = (r[k][0] for k in ("plain", "ours", "straight", "straight_refine", "straight_idle"))
    # One refinement iteration of ours is one truncated forward + backward, the same work as a guided step.
    ours_none, ours_full = 50 * p + 25 * o, 50 * p + 25 * o + 60 * o
    straight_none = 50 * p + 25 * s + 25 * si
    straight_full = straight_none + 60 * sr + 3 * s
    print(f"    50 steps, no refinement:   ours {ours_none / (50 * p):.2f}x plain, straightforward "
          f"{straight_none / (50 * p):.2f}x plain, speed-up {straight_none / ours_none:.2f}x")  # fmt: skip
    print(f"    50 steps, 3x20 refinement: ours {ours_full / (50 * p):.2f}x plain, straightforward "
          f"{straight_full / (50 * p):.2f}x plain, speed-up {straight_full / ours_full:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="a")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(min(4, torch.get_num_threads()))
    if args.part in ("a", "both"):
        part_a(args.steps)
    if args.part in ("b", "both"):
        part_b()


if __name__ == "__main__":
    main()
