#!/usr/bin/env python
"""Choose SynGen's settings for a ToyWorld model: plain sampling against SynGen variants on two-subject prompts with
TUNING seeds (prompt seed 200, noise 60000+, as scripts/toyworld_ae_ablation.py; disjoint from
scripts/evaluate_toyworld.py's evaluation seeds: prompt seeds 0-2, noise 5000-40000+).

    python scripts/toyworld_syngen_tuning.py --toy 1 --n 64
    python scripts/toyworld_syngen_tuning.py --toy 2 --n 64 --variants "official,step 5"

Prints one line per variant: the rate of images showing all subjects (shapes), and all with the right colours (the
binding SynGen aims at), with 95% Wilson intervals, each paired against plain sampling (95% bootstrap interval), and
the seconds per image. The pairs come from the rule parser ("a red circle and a blue square": red -> circle,
blue -> square). DDIM 25 steps, guidance scale 3 (the ToyWorld evaluation's settings). The chosen settings are in
configs/toyworld/syngen.yaml and configs/toyworld2/syngen.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# variant name -> SynGenConfig fields changed from the official defaults (configs/guidance/syngen.yaml); "{res}"
# variants are made for every cross-attention side of the toy
VARIANTS: dict[str, dict] = {
    "official": {},
    "step 5": {"scale_factor": 5.0},
    "step 80": {"scale_factor": 80.0},
    "step 320": {"scale_factor": 320.0},
    "all steps": {"max_iter_to_alter": 50},
    "step 80, all steps": {"scale_factor": 80.0, "max_iter_to_alter": 50},
    "entities": {"include_entities": True},
}
SIDES = {"1": (8, 4), "2": (16, 8, 4)}  # the toys' cross-attention map sides at 64x64 images, main first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", choices=["1", "2"], default="2")
    parser.add_argument("--n", type=int, default=64, help="prompt-seed pairs (default 64)")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--attention_res", type=str, default=None, help="map sides to try (default: all the toy's)")
    parser.add_argument("--outdir", default="outputs/toyworld_syngen_tuning", help="sample grids (first 32 each)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants, "
                        "each at every side of --attention_res, or at one side: 'step 5@8'")  # fmt: skip
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
    from ldm.guidance.syngen.config import for_steps
    from ldm.inference import sample_prompts
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.outputs import safe_stem
    from ldm.toyworld.benchmarks import TOYS, subject_metrics
    from ldm.toyworld.prompts import subject_prompts
    from ldm.toyworld.sampling import SampleSettings, judge, load_toyworld_model, save_grid, start_noise
    from ldm.toyworld.stats import bootstrap_diff, wilson

    torch.set_grad_enabled(False)
    toy = TOYS[args.toy]
    model = load_toyworld_model(toy.config, toy.ckpt)
    prompts, _ = subject_prompts(args.n, 2, args.prompt_seed)
    seeds = [args.noise_seed + i for i in range(args.n)]
    settings = SampleSettings()
    method, official = load_guidance_yaml(REPO / "configs" / "guidance" / "syngen.yaml", "preset")
    f = 2 ** (len(model.first_stage_model.encoder.down) - 1)
    shape = (model.channels, settings.size // f, settings.size // f)  # [C, h, w]

    def sample(config) -> tuple[torch.Tensor, float]:
        t0, out = time.time(), []
        for lo in range(0, args.n, settings.batch_size):
            batch = prompts[lo : lo + settings.batch_size]
            x_t = start_noise(seeds[lo : lo + len(batch)], shape)  # [n, C, h, w]
            out.append(sample_prompts(
                model, DDIMSampler(model), batch, shape, settings.steps, settings.scale, x_T=x_t,
                guidance="syngen" if config is not None else "plain", log_tokens=False,
                guidance_config=None if config is None else for_steps(config, settings.steps),
            ).images)  # fmt: skip
        return torch.cat(out), (time.time() - t0) / args.n

    runs: list[tuple[str, dict | None]] = [("plain", None)]
    for item in chosen:
        name, _, side = item.partition("@")
        for res in [int(side)] if side else sides:
            runs.append((f"{name} @{res}x{res}", {"attention_res": res, **VARIANTS[name]}))
    plain = None
    for name, changes in runs:
        config = None if changes is None else method_config(method, changes, name, base=official)
        images, per_image = sample(config)
        save_grid(images[:32], Path(args.outdir) / f"toy{args.toy}" / f"{safe_stem(name)}.png", nrow=8)
        metrics = subject_metrics(judge(images, prompts))
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
        sys.stdout.write(f"{name:28s} " + "  ".join(parts) + f"  {per_image:.2f} s/image\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
