"""GenEval's rules on the ToyWorld detector's output: single object, two objects, counting, colours, position and
colour attribution (Ghosh et al., "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment",
NeurIPS 2023 Datasets and Benchmarks), written from the paper and checked against the official evaluation code
(tests/fixtures/geneval/).

A prompt carries GenEval's metadata: ``include`` requirements (a class, a count, optionally a colour and a position
relative to an earlier requirement) combined with AND, and ``exclude`` requirements (a class and a count reached by
too many objects) combined with OR. An image is correct when every include holds and no exclude does:

- the detections of a class are ordered by confidence; a requirement of ``count`` looks at the first ``count`` of
  them only (fewer: not matched);
- colour: at least ``count`` of those have the colour;
- position: each of those stands in the relation to every object the referred requirement matched; the relation of
  A to B comes from their box centres, each offset shrunk by ``position_threshold`` (0.1) times the sum of the two
  boxes' sides along it; "left of"/"right of" when the shrunk x offset is more than half the length of the original
  offset, "above"/"below" likewise for y (image y points down); no relation when both shrunk offsets vanish;
- exclude: the class has at least ``count`` detections.

Scores: the share of correct images per task, and their mean over the tasks measured (GenEval's "overall").

What differs from GenEval, because the judge is the toy detector: classes are the toy shapes (a learned word counts
as its concept's shape), the colour of an object is the detector's (GenEval asks CLIP to classify the masked crop),
and the detector has no confidence: it names a shape or rejects the component ("unknown", no class). Named
detections get confidence 0.99-1 by their distance to the shape prototype, so GenEval's thresholds (0.3, counting
0.9) keep them all and, within a class, nearer the prototype comes first. GenEval's prompts are de-duplicated, 4
images each; the toys' few words allow few distinct prompts, so prompts are drawn with repetition, one seed per
image.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ldm.toyworld.detect import REJECT_DISTANCE, Detection
from ldm.toyworld.scenes import DEFAULT_COLOURS, NAMED_SHAPES, caption_vocabulary

__all__ = ["TASKS", "TASK_TITLES", "Requirement", "GenEvalPrompt", "GenEvalObject", "GenEvalRules",
           "relative_position", "evaluate", "evaluate_detections", "objects_from_detections", "task_prompts",
           "unaskable_words", "task_scores"]  # fmt: skip

# GenEval's task tags, in its table's order, and the titles the results use.
TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TASK_TITLES: dict[str, str] = {
    "single_object": "single object",
    "two_object": "two objects",
    "counting": "counting",
    "colors": "colours",
    "position": "position",
    "color_attr": "colour attribution",
}
POSITIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Requirement:
    """One include or exclude clause: ``count`` objects of ``shape`` (with ``colour``; ``position``: (relation, index
    of the include whose matched objects are the reference))."""

    shape: str
    count: int = 1
    colour: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class GenEvalPrompt:
    """A prompt and its metadata (GenEval's ``evaluation_metadata.jsonl`` line)."""

    tag: str
    prompt: str
    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...] = ()

    @property
    def spec(self) -> str:
        """The guidance token spec: the shape words the prompt names, in order (a plural is its word as written)."""
        words = [w.strip(",") for w in self.prompt.split()]
        shapes = {r.shape for r in self.include}
        return ",".join(dict.fromkeys(w for w in words if w in shapes or w.removesuffix("s") in shapes))


@dataclass(frozen=True)
class GenEvalObject:
    """A detection as GenEval's rules see it: class, colour, box (x0, y0, x1, y1) and confidence."""

    shape: str
    colour: str
    bbox: tuple[float, float, float, float]
    score: float = 1.0


@dataclass(frozen=True)
class GenEvalRules:
    """GenEval's knobs (its ``--options`` defaults)."""

    threshold: float = 0.3  # confidence a detection needs
    counting_threshold: float = 0.9  # ... in the counting task
    max_objects: int = 16  # detections kept per class, most confident first
    position_threshold: float = 0.1  # the margin, in box sides, that a centre offset must exceed


def relative_position(a: GenEvalObject, b: GenEvalObject, position_threshold: float = 0.1) -> set[str]:
    """The relations of ``a`` to ``b`` ("left of", "right of", "above", "below"; image y down)."""
    boxes = np.array([a.bbox, b.bbox], dtype=np.float64).reshape(2, 2, 2)  # [object, corner, xy]
    centre_a, centre_b = boxes.mean(axis=1)
    side_a, side_b = np.abs(boxes[:, 1] - boxes[:, 0])  # [xy] each
    offset = centre_a - centre_b
    shrunk = np.maximum(np.abs(offset) - position_threshold * (side_a + side_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _by_class(objects: Sequence[GenEvalObject], threshold: float, max_objects: int) -> dict[str, list[GenEvalObject]]:
    """Per class, the objects above ``threshold``, most confident first, at most ``max_objects``. Equal confidences
    come last-given first, as GenEval's reversed ``np.argsort`` orders them."""
    out: dict[str, list[GenEvalObject]] = {}
    for obj in sorted(objects, key=lambda o: o.score)[::-1]:
        if obj.score > threshold and len(out.setdefault(obj.shape, [])) < max_objects:
            out[obj.shape].append(obj)
    return {k: v for k, v in out.items() if v}


def evaluate(
    objects: Sequence[GenEvalObject], prompt: GenEvalPrompt, rules: GenEvalRules | None = None
) -> tuple[bool, str]:
    """Whether an image with these detections is correct for ``prompt``, and why not (one line per failed clause)."""
    rules = rules or GenEvalRules()
    threshold = rules.counting_threshold if prompt.tag == "counting" else rules.threshold
    found_by_class = _by_class(objects, threshold, rules.max_objects)
    correct, reasons = True, []
    matched: list[list[GenEvalObject] | None] = []
    for req in prompt.include:
        found = found_by_class.get(req.shape, [])[: req.count]
        ok = len(found) >= req.count
        if not ok:
            reasons.append(f"expected {req.shape}>={req.count}, found {len(found)}")
        else:
            if req.colour is not None:
                hits = sum(o.colour == req.colour for o in found)
                if hits < req.count:
                    ok = False
                    reasons.append(f"expected {req.colour} {req.shape}>={req.count}, found {hits} {req.colour}")
            if req.position is not None and ok:
                relation, target = req.position
                if matched[target] is None:
                    ok = False
                    reasons.append(f"no target for {req.shape} to be {relation}")
                else:
                    margin = rules.position_threshold
                    pairs = ((o, t) for o in found for t in matched[target])
                    bad = next(((o, t) for o, t in pairs if relation not in relative_position(o, t, margin)), None)
                    if bad is not None:
                        ok = False
                        seen = relative_position(*bad, margin)
                        reasons.append(f"expected {req.shape} {relation} target, found {' and '.join(seen)} target")
        correct = correct and ok
        matched.append(found if ok else None)
    for req in prompt.exclude:
        n = len(found_by_class.get(req.shape, []))
        if n >= req.count:
            correct = False
            reasons.append(f"expected {req.shape}<{req.count}, found {n}")
    return correct, "\n".join(reasons)


def objects_from_detections(detections: Sequence[Detection], reject_distance: float = REJECT_DISTANCE) -> list[
    GenEvalObject
]:  # fmt: skip
    """The toy detector's named detections as GenEval objects. Confidence ``1 - 0.01 * distance / reject_distance``
    (in [0.99, 1]): every named detection passes GenEval's thresholds, and nearer the shape prototype is more
    confident; an "unknown" component is no object."""
    return [
        GenEvalObject(d.shape, d.colour, (float(d.bbox[0]), float(d.bbox[1]), float(d.bbox[2]), float(d.bbox[3])),
                      1.0 - 0.01 * min(d.shape_distance / reject_distance, 1.0))
        for d in detections if d.shape != "unknown"
    ]  # fmt: skip


def evaluate_detections(
    detections: Sequence[Detection], prompt: GenEvalPrompt, rules: GenEvalRules | None = None
) -> tuple[bool, str]:
    """:func:`evaluate` on the toy detector's output for one image."""
    return evaluate(objects_from_detections(detections), prompt, rules)


# --- the toys' prompts (GenEval's generators over the toy shapes and colours) ------------------------------------


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(word: str) -> str:
    return f"{word}es" if word.endswith("s") else f"{word}s"


def _draw(tag: str, rng: np.random.Generator, shapes: Sequence[str], colours: Sequence[str]) -> GenEvalPrompt:
    """One prompt of task ``tag`` (GenEval's ``create_prompts.py`` templates; single objects are cycled instead)."""
    if tag == "two_object":
        a, b = rng.choice(len(shapes), size=2, replace=False)
        return GenEvalPrompt(tag, f"a photo of {_article(shapes[a])} and {_article(shapes[b])}",
                             (Requirement(shapes[a]), Requirement(shapes[b])))  # fmt: skip
    if tag == "counting":
        shape, num = shapes[int(rng.choice(len(shapes)))], int(rng.integers(2, 4, endpoint=True))
        return GenEvalPrompt(tag, f"a photo of {NUMBERS[num]} {_plural(shape)}", (Requirement(shape, num),),
                             (Requirement(shape, num + 1),))  # fmt: skip
    if tag == "colors":
        shape, colour = shapes[int(rng.choice(len(shapes)))], colours[int(rng.choice(len(colours)))]
        return GenEvalPrompt(tag, f"a photo of {_article(colour)} {shape}", (Requirement(shape, colour=colour),))
    if tag == "position":
        a, b = rng.choice(len(shapes), size=2, replace=False)
        relation = POSITIONS[int(rng.choice(len(POSITIONS)))]
        return GenEvalPrompt(tag, f"a photo of {_article(shapes[a])} {relation} {_article(shapes[b])}",
                             (Requirement(shapes[b]), Requirement(shapes[a], position=(relation, 0))))  # fmt: skip
    if tag == "color_attr":
        a, b = rng.choice(len(shapes), size=2, replace=False)
        ca, cb = rng.choice(len(colours), size=2, replace=False)
        prompt = f"a photo of {_article(colours[ca])} {shapes[a]} and {_article(colours[cb])} {shapes[b]}"
        return GenEvalPrompt(tag, prompt, (Requirement(shapes[a], colour=colours[ca]),
                                           Requirement(shapes[b], colour=colours[cb])))  # fmt: skip
    raise ValueError(f"unknown GenEval task {tag!r}; use one of {', '.join(TASKS)}")


def task_prompts(
    tag: str,
    n: int,
    seed: int,
    shapes: Sequence[str] = NAMED_SHAPES,
    colours: Sequence[str] = DEFAULT_COLOURS,
) -> list[GenEvalPrompt]:
    """``n`` prompts of task ``tag`` over the toy ``shapes`` and ``colours`` (a pure function of its arguments):
    single objects cycle through the shapes ("a photo of a circle"), the other tasks draw GenEval's templates."""
    if tag == "single_object":
        cycle = itertools.cycle(shapes)
        return [GenEvalPrompt(tag, f"a photo of {_article(s)}", (Requirement(s),)) for s in itertools.islice(cycle, n)]
    rng = np.random.default_rng([seed, TASKS.index(tag) if tag in TASKS else 99])
    return [_draw(tag, rng, shapes, colours) for _ in range(n)]


def unaskable_words(tag: str, vocabulary: Sequence[str] | None = None) -> list[str]:
    """The words of task ``tag``'s prompts that a toy's captions never contain (default: the ToyWorld caption
    vocabulary, which ends at "with", "next to"): the task cannot be asked of a model trained on them. Empty when
    every word is known."""
    known = set(vocabulary if vocabulary is not None else caption_vocabulary())
    words = {w for p in task_prompts(tag, 64, 0) for w in p.prompt.split()}
    return sorted(words - known)


def task_scores(hits: Mapping[str, np.ndarray]) -> tuple[dict[str, float], float]:
    """Per task the share of correct images, and their mean over the tasks given (GenEval's overall score)."""
    per_task = {tag: float(np.asarray(h, dtype=float).mean()) for tag, h in hits.items()}
    return per_task, float(np.mean(list(per_task.values()))) if per_task else float("nan")
