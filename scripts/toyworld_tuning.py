#!/usr/bin/env python
"""Choose a guidance method's settings for a ToyWorld model on TUNING seeds: plain sampling against the method's
official settings and one- or two-knob changes of them (ldm/toyworld/tuning.py has the variants), on two-subject
prompts with prompt seed 200 and noise 60000+ (disjoint from scripts/evaluate_toyworld.py's evaluation seeds).

    python scripts/toyworld_tuning.py --method ae --toy 2 --n 64
    python scripts/toyworld_tuning.py --method conform --toy 2 --n 24 --variants "official,official@8,step size 5@8"
    python scripts/toyworld_tuning.py --method syngen --toy 1 --variants "official,mine=scale_factor:40"

A variant runs at the toy's main map side (8x8 for ToyWorld 1, 16x16 for ToyWorld 2) unless it names one ("@8" or
attention_res:8). Prints one line per variant: all subjects present, all with the right colours, a subject missing,
a subject not drawn at all (rates with 95% Wilson intervals; the first two with their paired difference to plain and
its 95% bootstrap interval), seconds and UNet evaluations per image. Diagnostic only: the chosen settings are
written by hand to configs/toyworld[2]/<method>.yaml with the lines that chose them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from ldm.errors import UserError
    from ldm.guidance import method_names
    from ldm.toyworld.tuning import VARIANTS, parse_variants, tune

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=[m for m in method_names() if m != "plain"])
    parser.add_argument("--toy", choices=["1", "2"], default="2")
    parser.add_argument("--n", type=int, default=64, help="prompt-seed pairs (default 64)")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--variants", default=None, help="comma-separated variants (default: all of the method's)")
    parser.add_argument("--outdir", default="outputs/toyworld_tuning", help="sample grids (first 32 per variant)")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise UserError(f"--n {args.n}: must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    spec = args.variants or ",".join(VARIANTS.get(args.method, {"official": {}}))
    variants = parse_variants(args.method, spec, 8 if args.toy == "1" else 16)
    tune(args.toy, args.method, variants, args.n, args.prompt_seed, args.noise_seed, Path(args.outdir))
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
