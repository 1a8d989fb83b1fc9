"""GenEval's rules on the ToyWorld detector (ldm/toyworld/geneval.py): the verdicts of GenEval's official evaluation
code on synthetic detections (tests/fixtures/geneval/, made by make_geneval_goldens.py), and every task, counting and
position included, on rendered scenes of known layout judged through the detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO

from ldm.toyworld.detect import detect
from ldm.toyworld.geneval import (
    TASKS,
    GenEvalObject,
    GenEvalPrompt,
    Requirement,
    evaluate,
    evaluate_detections,
    relative_position,
    task_prompts,
    task_scores,
    unaskable_words,
)
from ldm.toyworld.scenes import SceneSpec, ToyObject, image_to_array, render_scene

GOLDENS = REPO / "tests" / "fixtures" / "geneval" / "goldens.json"


def _prompt(metadata: dict) -> GenEvalPrompt:
    def req(r: dict) -> Requirement:
        position = tuple(r["position"]) if "position" in r else None
        return Requirement(r["class"], r["count"], r.get("color"), position)

    return GenEvalPrompt(metadata["tag"], metadata["prompt"], tuple(map(req, metadata["include"])),
                         tuple(map(req, metadata.get("exclude", []))))  # fmt: skip


def test_verdicts_match_the_official_evaluation():
    goldens = json.loads(GOLDENS.read_text())
    assert goldens["options"]["POSITION_THRESHOLD"] == 0.1 and len(goldens["cases"]) > 300
    tags = set()
    for case in goldens["cases"]:
        objects = [GenEvalObject(o["class"], o["colour"], tuple(o["bbox"]), o["score"]) for o in case["objects"]]
        correct, reason = evaluate(objects, _prompt(case["metadata"]))
        assert correct == case["correct"], (case, reason)
        # the same clauses fail (one reason line each)
        assert len(reason.splitlines()) == len(case["reason"].splitlines()), (case, reason)
        tags.add((case["metadata"]["tag"], correct))
    assert tags == {(t, ok) for t in TASKS for ok in (True, False)}  # every task both ways


def test_relative_positions_match_the_official_code():
    pairs = json.loads(GOLDENS.read_text())["positions"]
    for pair in pairs:
        a, b = (GenEvalObject("circle", "red", tuple(pair[k])) for k in ("a", "b"))
        assert sorted(relative_position(a, b)) == pair["relations"], pair
    # and by hand: 10 px apart horizontally, boxes 10 wide -> margin 0.1 * 20 = 2 px, dx = 8/10 > 0.5
    left, right = GenEvalObject("circle", "red", (0, 0, 10, 10)), GenEvalObject("square", "red", (10, 0, 20, 10))
    assert relative_position(left, right) == {"left of"} and relative_position(right, left) == {"right of"}
    assert relative_position(left, GenEvalObject("square", "red", (1, 1, 11, 11))) == set()  # inside the margin


def _image(*objects: ToyObject) -> torch.Tensor:
    arr = image_to_array(render_scene(SceneSpec(tuple(objects))))  # [H, W, 3] in [-1, 1]
    return torch.from_numpy((arr + 1) / 2).permute(2, 0, 1)


def _judge(image: torch.Tensor, tag: str, prompt: str, *include: Requirement, exclude=()) -> bool:
    return evaluate_detections(detect(image), GenEvalPrompt(tag, prompt, include, tuple(exclude)))[0]


def test_every_task_on_rendered_scenes():
    red_circle = ToyObject("circle", "red", (16, 32), 10)
    blue_square = ToyObject("square", "blue", (48, 32), 10)
    both = _image(red_circle, blue_square)
    assert _judge(both, "single_object", "a photo of a circle", Requirement("circle"))
    assert not _judge(both, "single_object", "a photo of a triangle", Requirement("triangle"))
    assert _judge(both, "two_object", "", Requirement("circle"), Requirement("square"))
    assert not _judge(_image(red_circle), "two_object", "", Requirement("circle"), Requirement("square"))
    assert _judge(both, "colors", "", Requirement("circle", colour="red"))
    assert not _judge(both, "colors", "", Requirement("circle", colour="blue"))
    assert _judge(both, "color_attr", "", Requirement("circle", colour="red"), Requirement("square", colour="blue"))
    swapped = (Requirement("circle", colour="blue"), Requirement("square", colour="red"))
    assert not _judge(both, "color_attr", "", *swapped)  # the colours bound to the wrong shapes
    # position: the circle is left of the square, not above it
    left = (Requirement("square"), Requirement("circle", position=("left of", 0)))
    above = (Requirement("square"), Requirement("circle", position=("above", 0)))
    assert _judge(both, "position", "", *left) and not _judge(both, "position", "", *above)
    stacked = _image(ToyObject("circle", "red", (32, 14), 9), ToyObject("square", "blue", (32, 48), 9))
    assert _judge(stacked, "position", "", *above) and not _judge(stacked, "position", "", *left)
    near = _image(ToyObject("circle", "red", (20, 30), 9), ToyObject("square", "blue", (44, 34), 9))
    assert not _judge(near, "position", "", *above)  # 4 px lower is inside the margin: only "left of"
    # counting: two requested, at least two found and not three
    two = (Requirement("circle", 2),)
    not_three = (Requirement("circle", 3),)
    pair = _image(ToyObject("circle", "red", (16, 20), 8), ToyObject("circle", "green", (48, 44), 8))
    trio = _image(ToyObject("circle", "red", (14, 14), 8), ToyObject("circle", "green", (50, 14), 8),
                  ToyObject("circle", "blue", (32, 48), 8))  # fmt: skip
    assert _judge(pair, "counting", "", *two, exclude=not_three)
    assert not _judge(trio, "counting", "", *two, exclude=not_three)
    assert _judge(trio, "counting", "", Requirement("circle", 3), exclude=(Requirement("circle", 4),))
    assert not _judge(_image(red_circle), "counting", "", *two, exclude=not_three)


def test_toy_prompts_follow_geneval_templates():
    assert [p.prompt for p in task_prompts("single_object", 5, 0)] == [
        "a photo of a circle", "a photo of a square", "a photo of a triangle", "a photo of a diamond",
        "a photo of a circle"]  # fmt: skip
    assert task_prompts("color_attr", 20, 3) == task_prompts("color_attr", 20, 3)  # fixed by the seed
    for p in task_prompts("color_attr", 40, 3):
        a, b = p.include
        assert a.shape != b.shape and a.colour != b.colour
        assert p.prompt == f"a photo of a {a.colour} {a.shape} and a {b.colour} {b.shape}"
        assert p.spec == f"{a.shape},{b.shape}"
    for p in task_prompts("counting", 20, 1):
        (req,), (ex,) = p.include, p.exclude
        assert 2 <= req.count <= 4 and ex.count == req.count + 1 and p.prompt.endswith(f"{req.shape}s")
    for p in task_prompts("position", 20, 1):
        target, subject = p.include
        assert subject.position[1] == 0 and p.prompt.startswith(f"a photo of a {subject.shape} {subject.position[0]}")
    with pytest.raises(ValueError, match="unknown GenEval task"):
        task_prompts("shapes", 2, 0)


def test_counting_and_position_words_are_not_in_the_toy_captions():
    assert unaskable_words("counting")[:3] == ["circles", "diamonds", "four"]
    assert {"left", "right", "above", "below"} == set(unaskable_words("position"))
    for tag in ("single_object", "two_object", "colors", "color_attr"):
        assert unaskable_words(tag) == []
    assert unaskable_words("position", [*"a photo of an left right above below".split(), "circle", "square",
                                        "triangle", "diamond"]) == []  # fmt: skip


def test_task_scores_are_the_mean_over_tasks():
    per_task, overall = task_scores({"single_object": np.array([1, 1, 1, 0]), "colors": np.array([True, False])})
    assert per_task == {"single_object": 0.75, "colors": 0.5} and overall == pytest.approx(0.625)
