#!/usr/bin/env python
"""Choose Divide & Bind's settings for a ToyWorld model on TUNING seeds: plain sampling against the official defaults
and one-knob changes of them, on two-subject prompts "a {colour} {shape} and a {colour} {shape}" with each colour
bound to its shape (the --g_pairs of the prompt), prompt seed 200 and noise 60000+ as scripts/toyworld_ae_ablation.py
(disjoint from scripts/evaluate_toyworld.py's evaluation seeds).

    python scripts/toyworld_divide_bind_tuning.py --toy 2 --n 32
    python scripts/toyworld_divide_bind_tuning.py --toy 1 --n 32

Prints one line per variant: all subjects present (shapes), all with the right colours, the paired differences of both
against plain sampling (95% bootstrap intervals) and the seconds it took. Diagnostic only.
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

# variant name -> DivideBindConfig fields changed from the toy's base (the official defaults at the toy's map side)
VARIANTS: dict[str, dict] = {
    "official": {},
    "no binding term": {"bind": False},
    "no binding + softmax_scale 10": {"bind": False, "softmax_scale": 10.0},
    "no binding + maps at 4x4": {"bind": False, "attention_res": 4},
    "no iterative refinement": {"max_refinement_steps": 0, "max_refinement_steps_init_step": 0},
    "step size 5": {"scale_factor": 5.0},
    "softmax_scale 10": {"softmax_scale": 10.0},
    "softmax_scale 10 + step size 5": {"softmax_scale": 10.0, "scale_factor": 5.0},
    "maps at 8x8": {"attention_res": 8},
    "maps at 8x8 + softmax_scale 10": {"attention_res": 8, "softmax_scale": 10.0},
}
BASE = {"1": {"attention_res": 8, "attribute_res": 8}, "2": {"attention_res": 16, "attribute_res": 16}}


def sample(model, prompts, specs, seeds, settings, config, bind: bool):
    """Images ``[N, 3, H, W]`` in [0, 1]; ``config`` None: plain. With ``bind`` each prompt binds its colours to its
    shapes."""
    import torch

    from ldm.guidance.divide_bind import DivideAndBind
    from ldm.guidance.divide_bind.pairs import attributes_of_subjects
    from ldm.guidance.engine import SampleTarget
    from ldm.guidance.tokens import prompt_tokens, resolve_ae_tokens
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.toyworld.detect import parse_caption
    from ldm.toyworld.sampling import start_noise

    tokenizer = model.cond_stage_model.tokenizer
    f = 2 ** (len(model.first_stage_model.encoder.down) - 1)
    shape = (model.channels, settings.size // f, settings.size // f)  # [C, h, w]
    out = []
    for lo in range(0, len(prompts), settings.batch_size):
        batch, n = prompts[lo : lo + settings.batch_size], len(prompts[lo : lo + settings.batch_size])
        guidance = None
        if config is not None:
            targets = []
            for prompt, spec in zip(batch, specs[lo : lo + n]):
                tokens = prompt_tokens(model, prompt)
                subjects = resolve_ae_tokens(spec, tokens.ids, tokenizer, tokens.placeholders)
                pairs = ",".join(f"{c}:{s}" for c, s in parse_caption(prompt, {}) if c) if bind else ""
                attributes = attributes_of_subjects(pairs, subjects, tokens, tokenizer)
                targets.append(SampleTarget(subjects, tokens.eot, {"attributes": attributes}))
            guidance = DivideAndBind(model, config, targets)
        with torch.no_grad():
            c = model.get_learned_conditioning(list(batch))
            uc = model.get_learned_conditioning(n * [""])
            z, _ = DDIMSampler(model).sample(
                settings.steps, n, shape, conditioning=c, eta=0.0, x_T=start_noise(seeds[lo : lo + n], shape),
                verbose=False, unconditional_guidance_scale=settings.scale, unconditional_conditioning=uc,
                latent_guidance=guidance,
            )  # fmt: skip
            out.append(((model.decode_first_stage(z).float() + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", choices=["1", "2"], default="2")
    parser.add_argument("--n", type=int, default=32, help="prompt-seed pairs")
    parser.add_argument("--prompt_seed", type=int, default=200)
    parser.add_argument("--noise_seed", type=int, default=60000)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--outdir", default="outputs/toyworld_divide_bind_tuning")
    args = parser.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    logging.basicConfig(level=logging.WARNING)

    import numpy as np

    from ldm.guidance.divide_bind import DivideBindConfig
    from ldm.guidance.divide_bind.config import scale_schedule
    from ldm.outputs import safe_stem
    from ldm.toyworld.benchmarks import TOYS
    from ldm.toyworld.prompts import subject_prompts
    from ldm.toyworld.sampling import SampleSettings, judge, load_toyworld_model, save_grid
    from ldm.toyworld.stats import bootstrap_diff

    toy = TOYS[args.toy]
    model = load_toyworld_model(toy.config, toy.ckpt)
    prompts, specs = subject_prompts(args.n, 2, args.prompt_seed)
    seeds = [args.noise_seed + i for i in range(args.n)]
    settings = SampleSettings()
    plain = None
    for name in ["plain", *chosen]:
        fields = {"bind": True, **BASE[args.toy], **VARIANTS.get(name, {})}
        bind = fields.pop("bind")
        config = None if name == "plain" else scale_schedule(DivideBindConfig(**fields), settings.steps)
        t0 = time.time()
        images = sample(model, prompts, specs, seeds, settings, config, bind)
        seconds = time.time() - t0
        verdicts = judge(images, prompts)
        save_grid(images[:32], Path(args.outdir) / f"toy{args.toy}_{safe_stem(name)}.png", nrow=8)
        shapes = np.array([v.shapes_present for v in verdicts])
        colours = np.array([v.all_correct for v in verdicts])
        line = f"{name:34s} shapes {shapes.mean():.2f}  colours {colours.mean():.2f}"
        if plain is None:
            plain = (shapes, colours)
        else:
            for label, ref, hits in (("shapes", plain[0], shapes), ("colours", plain[1], colours)):
                mean, lo, hi = bootstrap_diff(ref, hits)
                line += f"  {label} vs plain {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        sys.stdout.write(f"{line}  {seconds:.0f} s\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
