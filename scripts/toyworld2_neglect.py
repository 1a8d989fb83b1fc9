#!/usr/bin/env python
"""Plain sampling's missing-subject rate of a ToyWorld (2) model on two-subject prompts, for choosing the caption
noise p of ToyWorld 2 (scripts/train_toyworld2.sh SWEEP=...).

    python scripts/toyworld2_neglect.py --ckpt logs/toyworld2/<run>/pilot.safetensors --label p=0.2 \
        --out logs/toyworld2/<run>/neglect.json

Prompts "a {colour} {shape} and a {colour} {shape}" (distinct shapes and colours; the prompt family of
scripts/evaluate_toyworld.py's benchmark (i), `ldm.toyworld.prompts.subject_prompts`) from --prompt_seed, one
starting noise per prompt from --noise_seed + i. The defaults (prompt seed 200, noise seeds 60000+) are TUNING
seeds: disjoint from scripts/evaluate_toyworld.py's evaluation seeds (prompt seeds 0-2, noise 10000+/30000+) and
from the first toy's A&E tuning (prompt seed 100, noise 50000+). A sample "misses a subject" when the ToyWorld
detector does not find both named shapes on distinct objects (colours ignored); "all present" additionally needs
the right colours.
Prints one line (label, rates with 95% Wilson intervals) and writes the per-sample verdicts as JSON with --out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ldm.toyworld.stats import wilson  # noqa: E402

TOY2_INFERENCE = REPO / "configs" / "toyworld2" / "txt2img-inference.yaml"

logger = logging.getLogger("toyworld2_neglect")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="exported model (.safetensors, scripts/export_toyworld.py ldm)")
    parser.add_argument("--config", default=str(TOY2_INFERENCE), help="inference config of the model")
    parser.add_argument("--n", type=int, default=64, help="prompt-seed pairs (default 64)")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (eta 0)")
    parser.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--label", default="", help="text printed at the start of the result line (e.g. p=0.2)")
    parser.add_argument("--out", default=None, help="write the verdicts here (.json)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 1:
        parser.error("--n and --steps must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from ldm.outputs import save_json
    from ldm.toyworld.benchmarks import plain_neglect
    from ldm.toyworld.sampling import SampleSettings, load_toyworld_model

    torch.set_grad_enabled(False)
    model = load_toyworld_model(args.config, args.ckpt)
    settings = SampleSettings(steps=args.steps, scale=args.scale)
    verdicts, seeds = plain_neglect(model, args.n, args.prompt_seed, args.noise_seed, settings)
    missing = sum(not v.shapes_present for v in verdicts)
    correct = sum(v.all_correct for v in verdicts)
    lo_m, hi_m = wilson(missing, args.n)
    lo_c, hi_c = wilson(correct, args.n)
    print(
        f"{args.label} missing-subject rate {missing / args.n:.2f} [{lo_m:.2f}, {hi_m:.2f}]  "
        f"all-present (right colours) {correct / args.n:.2f} [{lo_c:.2f}, {hi_c:.2f}]  n={args.n}",
        flush=True,
    )
    if args.out:
        rows = [{"prompt": v.prompt, "seed": s, "missing": not v.shapes_present, "all_correct": v.all_correct,
                 "seen": v.describe()} for v, s in zip(verdicts, seeds, strict=True)]  # fmt: skip
        save_json({"ckpt": args.ckpt, "label": args.label, "missing_rate": missing / args.n,
                   "all_correct_rate": correct / args.n, "samples": rows}, args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
