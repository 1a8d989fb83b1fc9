"""Textual-inversion training steps per second: posterior cache and SDPA attention on/off (random weights).

For each config (the goldens' tiny LDM and SD v1), four variants run in one process on the same batch stream:
  baseline  = no posterior cache, explicit-softmax attention (the original's path)
  cache     = posterior cache, explicit attention
  sdpa      = no cache, scaled_dot_product_attention
  cache+sdpa (the default path)
and their steps/s are printed with ratios to the baseline (printed, not asserted). Target on SD v1: cache+sdpa at
least 1.5x the baseline. A step = first stage (or cache) + text encoder with the placeholder + UNet forward/backward
+ AdamW on the placeholder vector, batch 1.

``--checkpointing``: the SD v1 step with the UNet's gradient checkpointing on and off (time, saved activations).
Usage: python benchmarks/bench_inversion.py [--configs tiny sd] [--steps 5] [--size 512] [--bf16] [--checkpointing]
(defaults: 512 px and 6 steps on CUDA; 256 px and 3 steps on CPU). Every variant first runs the whole batch stream
once (warm-up; the cached variants' caches fill, as after the first pass over 3-5 training images in real runs),
then the variants are timed in interleaved rounds over the same stream.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from common import pick_device, timed  # noqa: E402

from ldm.data.personalized import PersonalizedBase  # noqa: E402
from ldm.models.diffusion.posterior_cache import PosteriorCache  # noqa: E402
from ldm.modules.attention import CrossAttention  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

CONFIGS = {
    "tiny": REPO / "configs" / "tests" / "golden_tiny_ldm.yaml",
    "sd": REPO / "configs" / "stable-diffusion" / "v1-finetune.yaml",
}
VARIANTS = (("baseline", False, False), ("cache", True, False), ("sdpa", False, True), ("cache+sdpa", True, True))


def set_sdpa(model: torch.nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, CrossAttention):
            module.use_sdpa = enabled


def make_dataset(folder: Path, size: int, count: int = 3) -> PersonalizedBase:
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return PersonalizedBase(folder, size=size, repeats=100)


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.from_numpy(np.stack([it["image"] for it in items])),
        "caption": [it["caption"] for it in items],
        "image_path": [it["image_path"] for it in items],
        "flipped": torch.tensor([it["flipped"] for it in items]),
    }


def build(name: str, device: torch.device) -> torch.nn.Module:
    config = OmegaConf.load(CONFIGS[name]).model
    config.params.pop("ckpt_path", None)
    with torch.device("cpu"):
        model = instantiate_from_config(config)  # random weights
    model.learning_rate = 5.0e-3
    return model.to(device)


def bench(name: str, device: torch.device, size: int, steps: int, bf16: bool, rounds: int) -> dict[str, float]:
    model = build(name, device)
    optimizer = model.configure_optimizers()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), size)
        batches = [collate([dataset[i]]) for i in range(steps)]  # images i % 3 with random flips

        def run_steps(batch_list: list[dict]) -> None:
            for batch in batch_list:
                with autocast:
                    loss, _ = model.shared_step(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        caches = {label: PosteriorCache() if cache else None for label, cache, _ in VARIANTS}
        for label, _, sdpa in VARIANTS:  # warm-up over the whole stream (fills each cached variant's cache)
            model.posterior_cache = caches[label]
            set_sdpa(model, sdpa)
            run_steps(batches)
        seconds = {label: 0.0 for label, _, _ in VARIANTS}
        for _ in range(rounds):  # variants interleaved, so load changes on a shared machine hit them alike
            for label, _, sdpa in VARIANTS:
                model.posterior_cache = caches[label]
                set_sdpa(model, sdpa)
                torch.manual_seed(0)
                seconds[label] += timed(lambda: run_steps(batches), device)
        results = {label: rounds * len(batches) / s for label, s in seconds.items()}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def checkpointing_bench(device: torch.device, size: int, steps: int, rounds: int) -> None:
    """SD v1 finetune step (cache + SDPA) with the UNet's gradient checkpointing on and off: time and the bytes autograd
    saves for the backward (unique storages, weights excluded)."""
    model = build("sd", device)
    optimizer = model.configure_optimizers()
    unet = model.model.diffusion_model
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), size)
        batches = [collate([dataset[i]]) for i in range(steps)]
        model.posterior_cache = PosteriorCache()
        saved: dict[bool, int] = {}
        seconds = {True: 0.0, False: 0.0}

        def run_steps(flag: bool) -> None:
            unet.use_checkpoint = flag  # LatentDiffusion.shared_step follows it for the frozen UNet
            storages: dict[int, int] = {}

            def pack(t: torch.Tensor) -> torch.Tensor:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in weights:
                    storages[ptr] = t.untyped_storage().nbytes()
                return t

            for batch in batches:
                storages.clear()
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss, _ = model.shared_step(batch)
                saved[flag] = sum(storages.values())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        for flag in (True, False):  # warm-up (fills the posterior cache)
            run_steps(flag)
        for r in range(rounds):
            for flag in (True, False) if r % 2 == 0 else (False, True):
                seconds[flag] += timed(lambda f=flag: run_steps(f), device)
    per_step = {flag: s / (rounds * steps) for flag, s in seconds.items()}
    print(f"\nsd ({size}px) inversion step, gradient checkpointing: on | off")
    ratio = per_step[True] / per_step[False]
    print(f"  s/step:          {per_step[True]:6.2f} | {per_step[False]:6.2f}  (on/off {ratio:.2f}x)")
    print(f"  saved MiB/step:  {saved[True] / 2**20:6.0f} | {saved[False] / 2**20:6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "sd"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side for SD v1 (the tiny model uses 64)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the batch stream per variant")
    parser.add_argument("--checkpointing", action="store_true", help="SD v1 step with/without checkpointing only")
    args = parser.parse_args()
    if args.checkpointing:
        device = pick_device()
        checkpointing_bench(device, args.size or 256, args.steps or 2, args.rounds)
        return
    device = pick_device()
    steps = args.steps or (6 if device.type == "cuda" else 3)
    print(f"device {device}, {args.rounds} x {steps} timed steps per variant after a warm-up pass, batch 1")
    for name in args.configs:
        size = 64 if name == "tiny" else (args.size or (512 if device.type == "cuda" else 256))
        results = bench(name, device, size, steps, args.bf16, args.rounds)
        base = results["baseline"]
        print(f"\n{name} ({size}px):")
        for label, rate in results.items():
            print(f"  {label:>11}: {rate:8.3f} steps/s  ({rate / base:5.2f}x baseline)")


if __name__ == "__main__":
    main()
