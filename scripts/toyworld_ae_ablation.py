#!/usr/bin/env python
"""Which part of Attend-and-Excite helps or hurts on a ToyWorld model: plain sampling against the official defaults
and against one-knob changes of them, on two-subject prompts with TUNING seeds (prompt seed 200, noise 60000+, as
scripts/toyworld2_neglect.py; disjoint from scripts/evaluate_toyworld.py's evaluation seeds).

    python scripts/toyworld_ae_ablation.py --n 64            # ToyWorld 2 (the official defaults are its setting)
    python scripts/toyworld_ae_ablation.py --toy 1 --n 64    # the BERT toy, maps at 8x8

Prints one line per variant: missing-subject rate, not-drawn rate (fewer objects than subjects) and all-present rate,
with 95% Wilson intervals, and the paired difference of the all-present rate against plain sampling (95% bootstrap
interval). `--prompt_seed 0 --noise_seed 10000 --n 128` reruns evaluate_toyworld.py's benchmark (i)
pairs. Diagnostic only: the shipped evaluation stays scripts/evaluate_toyworld.py with the official defaults unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# variant name -> AttendExciteConfig fields changed from the official defaults
VARIANTS: dict[str, dict] = {
    "official": {},
    "no iterative refinement": {"max_refinement_steps": 0},
    "step size 5 (scale_factor 20 -> 5)": {"scale_factor": 5.0},
    "softmax_scale 10": {"softmax_scale": 10.0},
    "update until step 10 of 50 only": {"max_iter_to_alter": 10, "thresholds": {0: 0.05}},
    "maps at 8x8": {"attention_res": 8},
    "maps at 8x8 + softmax_scale 10": {"attention_res": 8, "softmax_scale": 10.0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", choices=["1", "2"], default="2")
    parser.add_argument("--n", type=int, default=64, help="prompt-seed pairs (default 64)")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--outdir", default="outputs/toyworld_ae_ablation", help="sample grids (first 32 per variant)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    args = parser.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.n < 1:
        parser.error("--n must be >= 1")
    logging.basicConfig(level=logging.WARNING)

    import torch

    from ldm.ae_flags import load_ae_config
    from ldm.outputs import safe_stem
    from ldm.toyworld.benchmarks import TOYS, run_pairs, subject_metrics
    from ldm.toyworld.prompts import subject_prompts
    from ldm.toyworld.sampling import SampleSettings, load_toyworld_model
    from ldm.toyworld.stats import bootstrap_diff, wilson

    torch.set_grad_enabled(False)
    toy = TOYS[args.toy]
    model = load_toyworld_model(toy.config, toy.ckpt)
    prompts, specs = subject_prompts(args.n, 2, args.prompt_seed)
    seeds = [args.noise_seed + i for i in range(args.n)]
    settings = SampleSettings()
    official = REPO / "configs" / "guidance" / "attend_and_excite.yaml"
    res = int(toy.attention_res.split(",")[0])
    plain_hits = None
    for name in ["plain", *chosen]:
        config = None if name == "plain" else load_ae_config(official, **{"attention_res": res, **VARIANTS[name]})
        verdicts, _ = run_pairs(model, prompts, specs, seeds, settings, config, Path(args.outdir), safe_stem(name))
        metrics = subject_metrics(verdicts)
        parts = []
        for key in ("missing a subject", "fewer objects than subjects", "all subjects (shapes)"):
            k = int(metrics[key].sum())
            lo, hi = wilson(k, args.n)
            parts.append(f"{key} {k / args.n:.2f} [{lo:.2f}, {hi:.2f}]")
        hits = metrics["all subjects (shapes)"]
        if plain_hits is None:
            plain_hits = hits
        else:
            mean, lo, hi = bootstrap_diff(plain_hits, hits)
            parts.append(f"all-present vs plain {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        sys.stdout.write(f"{name:40s} " + "  ".join(parts) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
