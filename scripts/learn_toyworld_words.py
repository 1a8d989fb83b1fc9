#!/usr/bin/env python
"""Learn the ToyWorld two-concept words "*" (the held-out star) and "@" (a yellow diamond) and merge them into one file.

    python scripts/learn_toyworld_words.py --toy 1   # -> models/toyworld/learned_words.safetensors
    python scripts/learn_toyworld_words.py --toy 2   # -> models/toyworld2/learned_words.safetensors

Each word is learned with main.py and the toy's finetune config (2 vectors, --steps 1000, --seed 0; "*" from
data/toyworld/heldout starting at "object", "@" from data/toyworld/yellow_diamond starting at "diamond"), then
scripts/merge_embeddings.py --config writes the file with both. A check follows: --n_check samples each of
"a photo of *", "a photo of @" and "a * and a @", plain sampling from tuning seeds (noise 80000+, disjoint from the
evaluation's), judged by the detector ("*" a star, "@" a yellow diamond). ldm/toyworld/concepts.py says why these two.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from ldm.errors import UserError  # noqa: E402
from ldm.toyworld.benchmarks import TOYS  # noqa: E402
from ldm.toyworld.concepts import WORDS, WORDS_FILES, learn_words, merge_words  # noqa: E402
from ldm.toyworld.sampling import SampleSettings, judge, load_toyworld_model, sample_images, save_grid  # noqa: E402

CHECK_SEED = 80_000  # tuning seeds of the words' check (the evaluation uses 5000-40000+, other tuning 50000-70000+)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy", choices=sorted(TOYS), default="1")
    p.add_argument("--steps", type=int, default=1000, help="inversion steps per word")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="the merged file (default: the toy's shipped learned_words file)")
    p.add_argument("--logdir", default=None, help="inversion runs (default outputs/learn_toyworld_words<toy>)")
    p.add_argument("--n_check", type=int, default=32, help="samples per check prompt (0: no check)")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: give at least 1 inversion step per word (the shipped files: 1000)")
    if args.n_check < 0:
        raise UserError(f"--n_check {args.n_check}: give 0 (no check) or more samples per check prompt")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    toy = TOYS[args.toy]
    output = Path(args.output) if args.output else WORDS_FILES[args.toy]
    logdir = Path(args.logdir or f"outputs/learn_toyworld_words{args.toy}")
    files = learn_words(list(WORDS), args.steps, logdir, args.seed, toy.ckpt, toy.finetune)
    merge_words([files[w] for w in WORDS], output, toy.config)
    print(f"wrote {output} ({', '.join(f'{w} from {f}' for w, f in files.items())})")
    if args.n_check:
        model = load_toyworld_model(toy.config, toy.ckpt, embedding_path=output)
        seeds = [CHECK_SEED + i for i in range(args.n_check)]
        for prompt in ("a photo of *", "a photo of @", "a * and a @"):
            prompts = [prompt] * args.n_check
            images = sample_images(model, prompts, seeds, SampleSettings())
            save_grid(images, logdir / f"check_{prompt.replace(' ', '_')}.png")
            verdicts = judge(images, prompts)
            found = np.array([v.all_correct for v in verdicts])
            print(f"{prompt!r}: drawn as meant (detector) in {found.sum()}/{len(found)} tuning samples")
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
