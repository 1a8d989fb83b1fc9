"""Caption noise for ToyWorld: over- and under-description, the way web captions cause catastrophic neglect.

- Over-description (probability ``p_over``): the caption also names a subject that is not in the picture, a
  "{colour} {shape}" whose shape is absent from the scene, inserted at a random place in the list of objects.
- Under-description (probability ``p_under``, scenes with two or more objects only, so that a caption always names
  something): one present object, picked uniformly, is left unnamed.

A model trained on such captions learns that a named subject is sometimes not drawn. Both draws come from their own
generator (stream 2 of `ldm.toyworld.scenes.scene_rng`), so ``p_over = p_under = 0`` leaves every caption as it was.
Pure functions of their arguments; nothing here imports the rest of ToyWorld (no import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CaptionNoise:
    """What one caption's noise draw decided.

    ``drop``: index (into the scene's objects) of the present object left unnamed, or None.
    ``phantom``: (colour, shape) of the absent subject the caption names, or None.
    ``slot``: where the phantom goes among the caption's (shuffled) phrases, ``0 <= slot <= number of phrases``.
    """

    drop: int | None = None
    phantom: tuple[str, str] | None = None
    slot: int = 0


def check_probability(value: float, name: str) -> float:
    """``value`` as a float in [0, 1]; a ValueError naming ``name`` otherwise."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}; set it in the dataset params")
    return value


def draw_caption_noise(
    present_shapes: Sequence[str],
    rng: np.random.Generator,
    p_over: float,
    p_under: float,
    named_shapes: Sequence[str],
    colours: Sequence[str],
) -> CaptionNoise:
    """Draw the noise of one caption for a scene whose objects have shapes ``present_shapes`` (in scene order).

    The phantom's shape is uniform over the ``named_shapes`` absent from the scene (so its (colour, shape) pair is
    absent too), its colour uniform over ``colours``. Under-description needs >= 2 objects; with fewer, ``p_under``
    has no effect. Draws are made in a fixed order (under, its index, over, shape, colour, slot) whatever the outcome,
    so one knob does not shift the other's draws.
    """
    p_over, p_under = check_probability(p_over, "p_over_describe"), check_probability(p_under, "p_under_describe")
    n = len(present_shapes)
    under = rng.random() < p_under
    drop_at = int(rng.integers(max(n, 1)))
    over = rng.random() < p_over
    absent = [s for s in named_shapes if s not in set(present_shapes)]
    shape_pick, colour_pick, slot_u = rng.random(), int(rng.integers(max(len(colours), 1))), rng.random()
    drop = drop_at if under and n >= 2 else None
    phantom = None
    if over and absent and colours:
        phantom = (str(colours[colour_pick]), str(absent[int(shape_pick * len(absent))]))
    n_phrases = n - (drop is not None)
    slot = min(int(slot_u * (n_phrases + 1)), n_phrases)
    return CaptionNoise(drop=drop, phantom=phantom, slot=slot)


def phantom_phrase(colour: str, shape: str) -> str:
    """The noun phrase of a phantom subject: "a red circle", "an ..." before a vowel."""
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"
