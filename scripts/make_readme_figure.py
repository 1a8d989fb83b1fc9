#!/usr/bin/env python
"""The README's picture: plain sampling against Attend-and-Excite on ToyWorld 2, the demo's prompts and seed.

    python scripts/make_readme_figure.py                  # docs/toyworld2_plain_vs_ae.png

For each of the demo's three two-subject prompts (scripts/demo.sh, part (a): 8 samples, seed 7, DDIM 25 steps,
scale 3, 64x64) it runs scripts/txt2img.py three times on the shipped ToyWorld 2 model: plain, A&E with the official
defaults (configs/guidance/attend_and_excite.yaml) and A&E with the first toy's preset
(configs/toyworld/attend_and_excite.yaml), then stacks the nine grids txt2img.py wrote, one labelled row each, into one
PNG (a 256-colour palette, about 200 KB). The samples are whatever those seeds give (nothing is picked); the rates
over 128 prompt-seed pairs are in docs/results.md. About 2 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [("a red circle and a blue square", "circle,square"), ("a green triangle and a yellow diamond",
           "triangle,diamond"), ("a blue circle and a red triangle", "circle,triangle")]  # fmt: skip
SETTINGS = [
    ("plain", []),
    ("A&E official", ["--ae_config", "configs/guidance/attend_and_excite.yaml"]),
    ("A&E x10 8x8", ["--ae_config", "configs/toyworld/attend_and_excite.yaml"]),
]


def sample(outdir: Path, prompt: str, tokens: str, extra: list[str], args: argparse.Namespace) -> Path:
    """One scripts/txt2img.py run as the demo makes it; returns the grid it wrote."""
    cmd = [sys.executable, str(REPO / "scripts" / "txt2img.py"), "--config", "configs/toyworld2/txt2img-inference.yaml",
           "--ckpt", "models/toyworld2/txt2img.safetensors", "--H", "64", "--W", "64", "--ddim_steps", str(args.steps),
           "--scale", "3", "--n_samples", str(args.n), "--seed", "7", "--prompt", prompt, "--outdir", str(outdir),
           "--device", "cpu"]  # fmt: skip
    if extra:
        cmd += ["--ae_tokens", tokens, *extra]
    subprocess.run(cmd, cwd=REPO, check=True)
    return max(outdir.glob("*.png"), key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/toyworld2_plain_vs_ae.png", help="the picture to write")
    parser.add_argument("--work", default="outputs/readme_figure", help="folder of the txt2img runs")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt and setting (the demo's 8)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the demo's 25)")
    args = parser.parse_args(argv)

    from PIL import Image, ImageDraw

    rows = []
    for prompt, tokens in PROMPTS:
        for label, extra in SETTINGS:
            outdir = REPO / args.work / prompt.replace(" ", "-") / label.replace(" ", "_")
            grid = sample(outdir, prompt, tokens, extra, args)
            rows.append((f'"{prompt}"', label, Image.open(grid).convert("RGB")))
    label_width, gap = 250, 4
    width = label_width + max(im.width for *_, im in rows)
    height = sum(im.height + gap for *_, im in rows)
    figure = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(figure)
    y = 0
    for k, (prompt, label, im) in enumerate(rows):
        figure.paste(im, (label_width, y))
        if k % len(SETTINGS) == 0:
            draw.text((4, y + 4), prompt, fill="black")
        draw.text((4, y + im.height // 2), label, fill="black")
        y += im.height + gap
    out = REPO / args.out
    # a 256-colour palette (no dithering) keeps the picture under 200 KB; the toy's flat colours survive it
    figure.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size // 1024} KB, {width}x{height})")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from ldm.cli import run_cli

    run_cli(main)
