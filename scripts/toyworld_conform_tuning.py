#!/usr/bin/env python
"""Choose CONFORM's settings for a ToyWorld model: plain sampling against the official defaults and one- or two-knob
changes of them, on two-subject prompts "a {colour} {shape} and a {colour} {shape}" with TUNING seeds (prompt seed
200, noise 60000+, as scripts/toyworld_ae_ablation.py; disjoint from scripts/evaluate_toyworld.py's evaluation seeds).

    python scripts/toyworld_conform_tuning.py --toy 1 --n 64
    python scripts/toyworld_conform_tuning.py --toy 2 --n 64 --variants official,"temperature 0.2"

CONFORM gets what scripts/evaluate_toyworld.py --methods gives every method: the prompt's shape words
(``--ae_tokens``), each a group of its own; ``--groups "2 3|6 7"`` groups each subject's colour with its shape
instead (the prompts share one layout). Prints one line per variant: missing-subject rate, all-present rate and
all-correct (colours too) rate with 95% Wilson intervals, the
paired differences of the all-present and all-correct rates against plain sampling (95% bootstrap intervals), and
the seconds per image. The chosen settings are written by hand to configs/toyworld[2]/conform.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# variant name -> ConformConfig fields changed from the official defaults (configs/guidance/conform.yaml)
VARIANTS: dict[str, dict] = {
    "official": {},
    "maps at 8x8": {"attention_res": 8},
    "maps at 4x4": {"attention_res": 4},
    "step size 5 (scale_factor 20 -> 5)": {"scale_factor": 5.0},
    "step size 60": {"scale_factor": 60.0},
    "temperature 0.2": {"temperature": 0.2},
    "temperature 1.0": {"temperature": 1.0},
    "softmax over tokens": {"softmax_normalize": True},
    "softmax over tokens x10": {"softmax_normalize": True, "softmax_scale": 10.0},
    "no memory": {"add_previous_attention_maps": False},
    "no iterative refinement": {"max_refinement_steps": 0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", choices=["1", "2"], default="2")
    parser.add_argument("--n", type=int, default=64, help="prompt-seed pairs (default 64)")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--attention_res", type=int, default=None, help="map side of every variant that does not "
                        "set one (default: the toy's A&E side, 8 for toy 1, 16 for toy 2)")  # fmt: skip
    parser.add_argument("--groups", default="", help="--g_groups of every variant (default: the shape words alone)")
    parser.add_argument("--outdir", default="outputs/toyworld_conform_tuning", help="sample grids (first 32)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=FIELD:VALUE;FIELD:VALUE",
                        help="another variant, e.g. 'mine=scale_factor:40;temperature:0.2' (YAML values)")  # fmt: skip
    args = parser.parse_args(argv)
    variants = {name: VARIANTS.get(name) for name in (v.strip() for v in args.variants.split(",")) if name}
    unknown = [name for name, v in variants.items() if v is None]
    if unknown:
        parser.error(f"--variants: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    import yaml

    for extra in args.extra:
        name, _, fields = extra.partition("=")
        try:
            variants[name] = {k: yaml.safe_load(v) for k, v in (f.split(":", 1) for f in fields.split(";") if f)}
        except ValueError:
            parser.error(f"--extra {extra!r}: expected NAME=FIELD:VALUE;FIELD:VALUE")
    if args.n < 1:
        parser.error("--n must be >= 1")
    logging.basicConfig(level=logging.WARNING)

    import torch

    from ldm.guidance.flags import load_guidance_yaml, method_config
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
    method, official = load_guidance_yaml(REPO / "configs" / "guidance" / "conform.yaml", "preset")
    res = args.attention_res or int(toy.attention_res.split(",")[0])
    outdir = Path(args.outdir)
    plain = None
    for name, changes in {"plain": None, **variants}.items():
        config = None
        if changes is not None:
            config = method_config(method, {"attention_res": res, "groups": args.groups, **changes}, name, official)
        stem = safe_stem(f"toy{args.toy} {name}")
        verdicts, seconds = run_pairs(model, prompts, specs, seeds, settings, config, outdir, stem, "conform")
        seconds /= args.n
        metrics = subject_metrics(verdicts)
        rows = {"missing": metrics["missing a subject"], "present": metrics["all subjects (shapes)"],
                "correct": metrics["all subjects, right colours"]}  # fmt: skip
        parts = []
        for key, hits in rows.items():
            k = int(hits.sum())
            lo, hi = wilson(k, args.n)
            parts.append(f"{key} {k / args.n:.2f} [{lo:.2f}, {hi:.2f}]")
        if plain is None:
            plain = rows
        else:
            for key in ("present", "correct"):
                mean, lo, hi = bootstrap_diff(plain[key], rows[key])
                parts.append(f"{key} vs plain {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        sys.stdout.write(f"{name:36s} " + "  ".join(parts) + f"  {seconds:.2f} s/image\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
