"""Render example images of a ToyWorld textual-inversion target as PNGs.

    python scripts/make_toyworld_heldout.py --out data/toyworld/heldout --n 5        # "*": the held-out star
    python scripts/make_toyworld_heldout.py --out data/toyworld/yellow_diamond --n 5 --shape diamond \
        --colour yellow --seed 1                                                     # "@": the yellow diamond

Each image holds one shape, centred with a little jitter, large, on a ToyWorld background. Without --colour each
image has another colour, so that inversion learns the shape rather than a colour or a place; with --colour every
image has that colour, so that inversion learns the colour with the shape (the second concept, "@").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.outputs import save_image  # noqa: E402
from ldm.toyworld.scenes import ALL_SHAPES, COLOURS, DEFAULT_HELDOUT, heldout_specs, render_scene  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/toyworld/heldout", help="output folder (created)")
    p.add_argument("--n", type=int, default=5, help="number of images")
    p.add_argument("--shape", default=DEFAULT_HELDOUT, choices=ALL_SHAPES, help="the shape (default: the star)")
    p.add_argument("--colour", default=None, choices=sorted(COLOURS), help="one colour for every image (default: "
                   "a different colour per image)")  # fmt: skip
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.colour}_{args.shape}" if args.colour else args.shape
    for i, spec in enumerate(heldout_specs(args.n, args.shape, args.size, args.seed, args.colour)):
        path = out / f"{name}_{i:02d}.png"
        save_image(render_scene(spec, args.size), path)  # atomic, umask permissions
        print(f"wrote {path} ({spec.objects[0].colour} {args.shape})")


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
