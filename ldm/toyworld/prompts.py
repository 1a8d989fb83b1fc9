"""The prompt families of the ToyWorld benchmarks, each a pure function of its size and seed.

- `single_subject_prompts`: "a photo of a {colour} {shape}", every colour x shape in turn (benchmark (o));
- `subject_prompts`: "a {colour} {shape} and a {colour} {shape}" (or three subjects), distinct shapes and colours
  (benchmarks (i) and (i'), and the caption-noise sweep of ToyWorld 2, scripts/toyworld2_neglect.py);
- `placeholder_prompts`: "a * and a {colour} {shape}" (benchmark (iii)), "a @ and a {colour} {shape}";
- `colour_and_shape_specs`: Attend-and-Excite token specs exciting the colour words too.
"""

from __future__ import annotations

import itertools

import numpy as np

from ldm.toyworld.detect import parse_caption
from ldm.toyworld.scenes import DEFAULT_COLOURS, NAMED_SHAPES


def single_subject_prompts(n: int) -> list[str]:
    """``n`` prompts "a photo of a {colour} {shape}", cycling through every colour x shape pair in a fixed order."""
    single = [f"a photo of a {c} {s}" for c, s in itertools.product(DEFAULT_COLOURS, NAMED_SHAPES)]
    return (single * (n // len(single) + 1))[:n]


def subject_prompts(n: int, k: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` prompts naming ``k`` subjects with distinct shapes and colours, and their A&E token specs."""
    rng = np.random.default_rng(seed)
    prompts, specs = [], []
    for _ in range(n):
        shapes = rng.choice(NAMED_SHAPES, size=k, replace=False)
        colours = rng.choice(DEFAULT_COLOURS, size=k, replace=False)
        phrases = [f"a {c} {s}" for c, s in zip(colours, shapes, strict=True)]
        prompts.append(" and ".join(phrases) if k == 2 else ", ".join(phrases[:-1]) + " and " + phrases[-1])
        specs.append(",".join(shapes))
    return prompts, specs


def colour_and_shape_specs(prompts: list[str]) -> list[str]:
    """A&E specs that excite every colour word and every shape word (or "*", "@") a prompt names, in order."""
    return [",".join(w for c, s in parse_caption(p, {"*": "*", "@": "@"}) for w in ((c, s) if c else (s,)))
            for p in prompts]  # fmt: skip


def placeholder_prompts(n: int, seed: int, word: str = "*", meaning: object = None) -> tuple[list[str], list[str]]:
    """``n`` prompts "a {word} and a {colour} {shape}" (pairs drawn with replacement) and their A&E specs
    "{word},{shape}". ``meaning``: the word's own (colour, shape), never drawn as the other subject (for "@", the
    yellow diamond); None (as for "*", the star, which no caption names) draws from every pair."""
    rng = np.random.default_rng(seed)
    combos = [c for c in itertools.product(DEFAULT_COLOURS, NAMED_SHAPES) if c != meaning]
    picks = [combos[int(i)] for i in rng.integers(len(combos), size=n)]
    return [f"a {word} and a {c} {s}" for c, s in picks], [f"{word},{s}" for _, s in picks]
