#!/usr/bin/env python
"""Choose INITNO's settings for a ToyWorld model: plain sampling against INITNO variants on two-subject prompts with
TUNING seeds (prompt seed 200, noise 60000+, as scripts/toyworld_ae_ablation.py; disjoint from
scripts/evaluate_toyworld.py's evaluation seeds: prompt seeds 0-2, noise 5000-40000+).

    python scripts/toyworld_initno_tuning.py --toy 2 --n 64
    python scripts/toyworld_initno_tuning.py --toy 1 --n 64 --variants "official,softmax 10" --attention_res 8

INITNO excites the shape words (as A&E does on the toys). Each image starts from its seed's generator, which also
draws INITNO's fresh noise for later rounds, so an image does not depend on its batch. Prints one line per variant:
the rate of images showing all subjects (shapes) and all with the right colours, with 95% Wilson intervals, each
paired against plain sampling (95% bootstrap interval), the seconds per image and the UNet evaluations per image
(every sample through the UNet: a CFG step counts 2, a truncated guidance pass 1, as evaluate_toyworld.py --methods
counts them). DDIM 25 steps, guidance scale 3 (the ToyWorld evaluation's settings).
The chosen settings are in configs/toyworld/initno.yaml and configs/toyworld2/initno.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# variant name -> InitNOConfig fields changed from the official defaults (configs/guidance/initno.yaml); each is run
# at every map side of --attention_res, or at one side: "official@8"
VARIANTS: dict[str, dict] = {
    "official": {},
    "noise only": {"max_iter_to_alter": 0},
    "sampling only": {"noise_rounds": 0},
    "softmax 10": {"softmax_scale": 10.0},
    "softmax 10, noise only": {"softmax_scale": 10.0, "max_iter_to_alter": 0},
    "step 5": {"scale_factor": 5.0},
    "lr 0.05": {"lr": 0.05},
}
SIDES = {"1": (8, 4), "2": (16, 8, 4)}  # the toys' cross-attention map sides at 64x64 images, main first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", choices=["1", "2"], default="2")
    parser.add_argument("--n", type=int, default=64, help="prompt-seed pairs (default 64)")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--attention_res", type=str, default=None, help="map sides to try (default: all the toy's)")
    parser.add_argument("--outdir", default="outputs/toyworld_initno_tuning", help="sample grids (first 32 each)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants, "
                        "each at every side of --attention_res, or at one side: 'official@8'")  # fmt: skip
    args = parser.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [name for name in chosen if name.split("@")[0] not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.n < 1:
        parser.error("--n must be >= 1")
    sides = SIDES[args.toy] if args.attention_res is None else tuple(int(s) for s in args.attention_res.split(","))
    logging.basicConfig(level=logging.WARNING)

    import torch

    from ldm.guidance.flags import load_guidance_yaml, method_config
    from ldm.outputs import safe_stem
    from ldm.toyworld.benchmarks import TOYS, run_pairs, subject_metrics
    from ldm.toyworld.methods import count_unet_evaluations
    from ldm.toyworld.prompts import subject_prompts
    from ldm.toyworld.sampling import SampleSettings, load_toyworld_model
    from ldm.toyworld.stats import bootstrap_diff, wilson

    torch.set_grad_enabled(False)
    toy = TOYS[args.toy]
    model = load_toyworld_model(toy.config, toy.ckpt)
    prompts, specs = subject_prompts(args.n, 2, args.prompt_seed)
    seeds = [args.noise_seed + i for i in range(args.n)]
    settings = SampleSettings()
    method, official = load_guidance_yaml(REPO / "configs" / "guidance" / "initno.yaml", "preset")
    outdir = Path(args.outdir) / f"toy{args.toy}"

    runs: list[tuple[str, dict | None]] = [("plain", None)]
    for item in chosen:
        name, _, side = item.partition("@")
        for res in [int(side)] if side else sides:
            runs.append((f"{name} @{res}x{res}", {"attention_res": res, **VARIANTS[name]}))
    plain = None
    for name, changes in runs:
        config = None if changes is None else method_config(method, changes, name, base=official)
        with count_unet_evaluations(model.model.diffusion_model) as evaluations:
            verdicts, seconds = run_pairs(model, prompts, specs, seeds, settings, config, outdir, safe_stem(name),
                                          "initno")  # fmt: skip
        per_image, passes = seconds / args.n, evaluations[0] / args.n
        metrics = subject_metrics(verdicts)
        plain = plain or metrics
        parts = []
        for key, label in (("all subjects (shapes)", "all present"), ("all subjects, right colours", "right colours")):
            k = int(metrics[key].sum())
            lo, hi = wilson(k, args.n)
            part = f"{label} {k / args.n:.2f} [{lo:.2f}, {hi:.2f}]"
            if changes is not None:
                mean, dlo, dhi = bootstrap_diff(plain[key], metrics[key])
                part += f" ({mean:+.3f} [{dlo:+.3f}, {dhi:+.3f}])"
            parts.append(part)
        sys.stdout.write(
            f"{name:30s} " + "  ".join(parts) + f"  {per_image:.2f} s/image  {passes:.0f} UNet evaluations/image\n"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
