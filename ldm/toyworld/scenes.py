"""ToyWorld scenes: procedurally drawn coloured shapes, their rendering and their template captions.

A miniature text-to-image world for training and measuring a tiny latent-diffusion model offline.
Every scene is a light, plain background with 1-3 non-overlapping, axis-aligned shapes in saturated, well-separated
colours. One shape (the held-out shape, a star by default) appears in training scenes but is only ever captioned with
the generic word ``object`` (which other shapes also get sometimes), so a model can draw it but has no word for it: the
textual-inversion target.

Scene ``i`` of a split is a pure function of ``(seed, split, i)``. The dataset over these scenes is
`ldm.toyworld.dataset.ToyWorldDataset`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ldm.toyworld.caption_noise import check_probability, draw_caption_noise, phantom_phrase

logger = logging.getLogger(__name__)

# Named colours (RGB 0-255). Hues are far apart (red ~0, yellow ~50, green ~130, blue ~225, purple ~285 degrees) so
# that a hue classifier separates them after blur, noise and colour shifts.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "yellow": (235, 195, 20),
    "green": (30, 170, 55),
    "blue": (35, 75, 215),
    "purple": (150, 45, 200),
}
DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")

# Shapes the captions name, and shapes that may be held out (never named).
NAMED_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
HELDOUT_SHAPES: tuple[str, ...] = ("star", "heart")
ALL_SHAPES: tuple[str, ...] = NAMED_SHAPES + HELDOUT_SHAPES
DEFAULT_HELDOUT = "star"
GENERIC_WORD = "object"

# The WordPiece vocabulary of the captions (BERT specials, "*", "," and "." and every caption word; no held-out name).
VOCAB_PATH = Path(__file__).resolve().parents[2] / "configs" / "toyworld" / "vocab.txt"

SPLITS: dict[str, int] = {"train": 0, "validation": 1, "val": 1, "test": 2}

# Radius of the bounding circle of each shape, in units of the object's ``size`` (used for the non-overlap test).
# Each shape's geometry (see `_shape_polygon`) is scaled so their areas are comparable (about 2.2-3.1 size^2).
BOUND_FACTOR: dict[str, float] = {
    "circle": 1.0,
    "square": 0.85 * math.sqrt(2.0),
    "triangle": 1.3,
    "diamond": 1.15,
    "star": 1.3,
    "heart": 1.27,
}

STAR_INNER_RATIO = 0.5  # inner / outer radius of the five-pointed star (fat points survive an f=4 autoencoder)

# Caption templates. ``{o}`` is a noun phrase with its article ("a red circle", "an object").
TEMPLATES_1: tuple[str, ...] = (
    "{o1}",
    "a photo of {o1}",
    "a picture of {o1}",
    "a drawing of {o1}",
    "an image of {o1}",
)
TEMPLATES_2: tuple[str, ...] = (
    "{o1} and {o2}",
    "a photo of {o1} and {o2}",
    "a picture of {o1} and {o2}",
    "{o1} with {o2}",
    "{o1} next to {o2}",
)
TEMPLATES_3: tuple[str, ...] = (
    "{o1}, {o2} and {o3}",
    "a photo of {o1}, {o2} and {o3}",
    "a picture of {o1}, {o2} and {o3}",
)
TEMPLATES_4: tuple[str, ...] = (  # only over-described three-object scenes (a phantom subject) have four phrases
    "{o1}, {o2}, {o3} and {o4}",
    "a photo of {o1}, {o2}, {o3} and {o4}",
)
CAPTION_WORDS_EXTRA: tuple[str, ...] = (
    *("a", "an", "photo", "picture", "drawing", "image", "of", "and", "with", "next", "to"),
)


@dataclass(frozen=True)
class ToyObject:
    """One object of a scene. ``centre`` is (x, y) in pixels of a ``canvas``-sized image; ``size`` in pixels."""

    shape: str
    colour: str
    centre: tuple[float, float]
    size: float
    rgb: tuple[int, int, int] | None = None  # exact fill colour (jittered around COLOURS[colour]); None = nominal


@dataclass(frozen=True)
class SceneSpec:
    """A scene: background colour, objects, and the canvas size the coordinates refer to."""

    objects: tuple[ToyObject, ...]
    background: tuple[int, int, int] = (240, 240, 240)
    canvas: int = 64


def _shape_polygon(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    """Vertices (x, y) of a polygonal shape centred at (cx, cy) with size ``s`` (image coordinates, y down)."""
    if shape == "square":
        h = 0.85 * s
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, apex up, circumcentre at (cx, cy)
        r = 1.3 * s
        return [(cx + r * math.sin(a), cy - r * math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if shape == "diamond":
        r = 1.15 * s
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":  # five points, one up
        r_out, r_in = 1.3 * s, 1.3 * s * STAR_INNER_RATIO
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = k * math.pi / 5
            pts.append((cx + r * math.sin(a), cy - r * math.cos(a)))
        return pts
    if shape == "heart":  # classic parametric heart, notch up, point down; x in [-16, 16], y in [-17, 12] units
        k = 1.15 * s / 16.5
        pts = []
        for t in np.linspace(0.0, 2 * math.pi, 96, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + k * x, cy - k * (y + 2.5)))
        return pts
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(ALL_SHAPES)}")


def render_scene(spec: SceneSpec, size: int | None = None, supersample: int = 4) -> Image.Image:
    """Draw ``spec`` anti-aliased: render at ``supersample`` x the output size, then box-filter down.

    ``size`` defaults to ``spec.canvas``; coordinates are rescaled from the canvas to ``size``.
    """
    size = spec.canvas if size is None else int(size)
    if size < 8:
        raise ValueError(f"render size must be >= 8 pixels, got {size}")
    big = size * supersample
    scale = big / spec.canvas
    img = Image.new("RGB", (big, big), tuple(int(c) for c in spec.background))
    draw = ImageDraw.Draw(img)
    for obj in spec.objects:
        fill = obj.rgb if obj.rgb is not None else COLOURS[obj.colour]
        cx, cy, s = obj.centre[0] * scale, obj.centre[1] * scale, obj.size * scale
        if obj.shape == "circle":
            draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=tuple(fill))
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, s), fill=tuple(fill))
    if supersample == 1:
        return img
    return img.resize((size, size), resample=Image.Resampling.BOX)


def check_names(values: Sequence[str], known: Sequence[str], what: str) -> tuple[str, ...]:
    """``values`` as a tuple; a ValueError naming ``what`` and the known names when one of them is unknown."""
    bad = [v for v in values if v not in known]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {list(known)}")
    return tuple(values)


def sample_scene(
    rng: np.random.Generator,
    canvas: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    shapes: Sequence[str] = NAMED_SHAPES,
    heldout_shape: str | None = DEFAULT_HELDOUT,
    heldout_prob: float = 0.12,
    colours: Sequence[str] = DEFAULT_COLOURS,
    min_size: float = 8.0,
    max_size: float = 13.0,
    gap: float = 4.0,
    colour_jitter: int = 12,
    max_tries: int = 200,
) -> SceneSpec:
    """Sample a scene. Sizes and gaps are given for a 64-pixel canvas and scale with ``canvas``.

    Each object is the held-out shape with probability ``heldout_prob``, else a uniform pick from ``shapes``.
    Objects never overlap: bounding circles stay ``gap`` pixels apart and inside the image.
    """
    shapes = check_names(shapes, ALL_SHAPES, "shapes")
    colours = check_names(colours, tuple(COLOURS), "colours")
    if heldout_shape is not None:
        check_names([heldout_shape], ALL_SHAPES, "heldout_shape")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    k = canvas / 64.0
    lo, hi, gap = min_size * k, max_size * k, gap * k
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[ToyObject] = []
    placed: list[tuple[float, float, float]] = []  # (x, y, bounding radius)
    for _ in range(n):
        use_heldout = heldout_shape is not None and rng.random() < heldout_prob
        shape = heldout_shape if use_heldout else shapes[int(rng.integers(len(shapes)))]
        colour = colours[int(rng.integers(len(colours)))]
        for attempt in range(max_tries):
            # shrink the size range for late attempts so crowded scenes still fit
            shrink = 1.0 if attempt < max_tries // 2 else 0.85
            s = float(rng.uniform(lo, hi)) * shrink
            s = max(s, lo * 0.85)
            b = BOUND_FACTOR[shape] * s
            x = float(rng.uniform(b + 1, canvas - b - 1))
            y = float(rng.uniform(b + 1, canvas - b - 1))
            if all(math.hypot(x - px, y - py) >= b + pb + gap for px, py, pb in placed):
                break
        else:
            continue  # no room: the scene gets fewer objects
        base = np.array(COLOURS[colour])
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-colour_jitter, colour_jitter + 1, 3), 0, 255))
        placed.append((x, y, b))
        objects.append(ToyObject(shape=shape, colour=colour, centre=(x, y), size=s, rgb=rgb))
    grey = int(rng.integers(228, 251))
    tint = rng.integers(-6, 7, 3)
    background = tuple(int(v) for v in np.clip(grey + tint, 0, 255))
    return SceneSpec(objects=tuple(objects), background=background, canvas=canvas)


def _noun_phrase(
    obj: ToyObject, rng: np.random.Generator, named: Sequence[str], generic_prob: float, drop_colour_prob: float
) -> str:
    noun = obj.shape if obj.shape in named and rng.random() >= generic_prob else GENERIC_WORD
    words = [noun] if rng.random() < drop_colour_prob else [obj.colour, noun]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def caption_for(
    spec: SceneSpec,
    rng: np.random.Generator,
    named_shapes: Sequence[str] = NAMED_SHAPES,
    generic_prob: float = 0.2,
    drop_colour_prob: float = 0.1,
    p_over_describe: float = 0.0,
    p_under_describe: float = 0.0,
    noise_rng: np.random.Generator | None = None,
    colours: Sequence[str] = DEFAULT_COLOURS,
) -> str:
    """A template caption for ``spec``. Shapes not in ``named_shapes`` (the held-out one) are always called
    ``object``; named shapes are called ``object`` with probability ``generic_prob`` (with the defaults, about 40% of
    the objects called ``object`` in training captions are the held-out shape; with ``generic_prob`` 0.05 and
    ``heldout_prob`` 0.15, as in phase 2 of the shipped model's training, about 75%). Objects are listed in a random
    order; the colour is dropped with probability ``drop_colour_prob``.

    Caption noise (`ldm.toyworld.caption_noise`, drawn from ``noise_rng``, required when a probability is > 0): with
    probability ``p_over_describe`` the caption also names an absent "{colour} {shape}" (colour from ``colours``);
    with probability ``p_under_describe`` one present object of a multi-object scene is left unnamed. With both 0
    (the default) ``noise_rng`` is not used and the caption is the noiseless one."""
    if not spec.objects:
        return "a photo of nothing"  # unreachable with min_objects >= 1; kept total
    objects, extra = list(spec.objects), None
    if check_probability(p_over_describe, "p_over_describe") or check_probability(p_under_describe, "p_under_describe"):
        if noise_rng is None:
            raise ValueError("caption noise (p_over_describe/p_under_describe > 0) needs a noise_rng")
        noise = draw_caption_noise(
            [o.shape for o in objects], noise_rng, p_over_describe, p_under_describe, named_shapes, colours
        )
        if noise.drop is not None:
            del objects[noise.drop]
        extra = noise
    order = rng.permutation(len(objects))
    phrases = [_noun_phrase(objects[int(i)], rng, named_shapes, generic_prob, drop_colour_prob) for i in order]
    if extra is not None and extra.phantom is not None:
        phrases.insert(extra.slot, phantom_phrase(*extra.phantom))
    templates = {1: TEMPLATES_1, 2: TEMPLATES_2, 3: TEMPLATES_3, 4: TEMPLATES_4}[len(phrases)]
    template = templates[int(rng.integers(len(templates)))]
    return template.format(**{f"o{i + 1}": p for i, p in enumerate(phrases)})


def caption_vocabulary(colours: Sequence[str] = tuple(COLOURS), shapes: Sequence[str] = NAMED_SHAPES) -> list[str]:
    """Every word (and punctuation mark) a caption can contain, sorted."""
    words = set(CAPTION_WORDS_EXTRA) | set(colours) | set(shapes) | {GENERIC_WORD, ","}
    return sorted(words)


def load_tokenizer(vocab_path: str | Path | None = None, max_length: int = 77):
    """The ToyWorld BERT tokenizer (``BertTokenizerFast``) from ``vocab_path`` (default: `VOCAB_PATH`).

    Note: in transformers 5 the vocabulary file is passed as ``vocab=``; the old ``vocab_file=`` keyword is silently
    ignored there and yields a 5-token vocabulary that maps every word to [UNK].
    """
    from ldm.modules.encoders.modules import bert_tokenizer

    path = Path(vocab_path) if vocab_path is not None else VOCAB_PATH
    if not path.is_file():
        raise FileNotFoundError(f"ToyWorld vocabulary not found at {path}; pass vocab_path= pointing at a vocab.txt")
    tok = bert_tokenizer(path, max_length)
    if len(tok) <= 5:
        raise RuntimeError(f"tokenizer built from {path} has only {len(tok)} tokens; is the file a WordPiece vocab?")
    return tok


def scene_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of scene ``index`` of ``split``: a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index), int(stream)])


def image_to_array(img: Image.Image) -> np.ndarray:
    """PIL RGB -> HWC float32 in [-1, 1] (the latent-diffusion dataset convention)."""
    return (np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).astype(np.float32)


def heldout_specs(
    n: int, shape: str = DEFAULT_HELDOUT, size: int = 64, seed: int = 0, colour: str | None = None
) -> list[SceneSpec]:
    """``n`` single-object scenes of ``shape`` (the textual-inversion examples: data/toyworld/heldout, the held-out
    star; data/toyworld/yellow_diamond, ``colour`` "yellow"): centred with a little jitter, large, a different colour
    per image unless ``colour`` fixes one; a pure function of the arguments."""
    check_names([shape], ALL_SHAPES, "shape")
    if colour is not None:
        check_names([colour], tuple(COLOURS), "colour")
    rng = np.random.default_rng([seed, 7])
    specs = []
    for i in range(n):
        k = size / 64.0
        s = float(rng.uniform(11.0, 14.0)) * k
        cx, cy = (float(v) for v in size / 2 + rng.uniform(-6, 6, 2) * k)
        colour_i = colour or DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
        grey = int(rng.integers(232, 251))
        bg = tuple(int(v) for v in np.clip(grey + rng.integers(-5, 6, 3), 0, 255))
        specs.append(SceneSpec(objects=(ToyObject(shape, colour_i, (cx, cy), s),), background=bg, canvas=size))
    return specs
