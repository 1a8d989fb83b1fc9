#!/usr/bin/env python
"""Write the Attend-and-Excite evaluation prompt set (a reconstruction) as ``category<TAB>prompt`` lines.

This is a RECONSTRUCTION of the prompt set described in the Attend-and-Excite paper (Chefer et al., 2023), not a copy
of the authors' file. It follows the categories and templates listed in the project's issue 6:

- animal-animal (66): "a {animal} and a {animal}" over all unordered pairs of the 12 animals (in list order);
- animal-object (144): every animal with every object: "a {animal} with a {object}" for the wearables
  (glasses, crown, bow) and "a {animal} and a {colour} {object}" otherwise;
- object-object (66): "a {colour} {object} and a {colour} {object}" over all unordered pairs of the 12 objects.

Colours are drawn with ``random.Random(seed)`` in the order the prompts are written; the two colours of an
object-object prompt are distinct. The default seed reproduces ``ldm/evaluation/data/attend_excite_prompts.txt``:

    python scripts/make_attend_excite_prompts.py --out ldm/evaluation/data/attend_excite_prompts.txt
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

ANIMALS = ["cat", "dog", "bird", "bear", "lion", "horse", "elephant", "monkey", "frog", "turtle", "rabbit", "mouse"]
OBJECTS = [
    "backpack", "crown", "suitcase", "chair", "balloon", "bow",
    "car", "bowl", "bench", "clock", "glasses", "apple",
]  # fmt: skip
WEARABLES = ["glasses", "crown", "bow"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black", "white"]
DEFAULT_SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "ldm" / "evaluation" / "data" / "attend_excite_prompts.txt"

HEADER = """\
# Attend-and-Excite evaluation prompts: a RECONSTRUCTION of the paper's prompt set (Chefer et al., 2023),
# not the authors' file. Written by scripts/make_attend_excite_prompts.py --seed {seed}.
# animal-animal (66): "a {{animal}} and a {{animal}}";
# animal-object (144): "a {{animal}} with a {{glasses|crown|bow}}" or "a {{animal}} and a {{colour}} {{object}}";
# object-object (66): "a {{colour}} {{object}} and a {{colour}} {{object}}".
# Colours drawn with random.Random({seed}). Format: category<TAB>prompt, one per line.
"""


def make_prompts(seed: int = DEFAULT_SEED) -> list[tuple[str, str]]:
    """All ``(category, prompt)`` pairs, in a fixed order."""
    rng = random.Random(seed)
    prompts: list[tuple[str, str]] = []
    for a, b in itertools.combinations(ANIMALS, 2):
        prompts.append(("animal-animal", f"a {a} and a {b}"))
    for animal in ANIMALS:
        for obj in OBJECTS:
            if obj in WEARABLES:
                prompts.append(("animal-object", f"a {animal} with a {obj}"))
            else:
                prompts.append(("animal-object", f"a {animal} and a {rng.choice(COLOURS)} {obj}"))
    for o1, o2 in itertools.combinations(OBJECTS, 2):
        c1, c2 = rng.sample(COLOURS, 2)
        prompts.append(("object-object", f"a {c1} {o1} and a {c2} {o2}"))
    return prompts


def render(seed: int = DEFAULT_SEED) -> str:
    """The file's text."""
    lines = [f"{cat}\t{prompt}" for cat, prompt in make_prompts(seed)]
    return HEADER.format(seed=seed) + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the colour draws")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output file ('-' for stdout)")
    args = parser.parse_args(argv)
    text = render(args.seed)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(make_prompts(args.seed))} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ldm.cli import run_cli

    run_cli(main)
