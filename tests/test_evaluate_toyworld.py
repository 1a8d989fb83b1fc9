"""The statistics and prompt sets of scripts/evaluate_toyworld.py, checked against independent computations."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ev():
    spec = importlib.util.spec_from_file_location("evaluate_toyworld", ROOT / "scripts" / "evaluate_toyworld.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_toyworld"] = module
    spec.loader.exec_module(module)
    return module


def test_wilson_interval_matches_the_closed_form(ev):
    # Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), computed here term by term
    for k, n in [(5, 10), (0, 20), (20, 20), (13, 16)]:
        z, p = 1.96, k / n
        denom = 1 + z**2 / n
        centre = p + z**2 / (2 * n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        lo, hi = ev.wilson(k, n)
        assert lo == pytest.approx((centre - half) / denom, abs=1e-12)
        assert hi == pytest.approx((centre + half) / denom, abs=1e-12)
    assert ev.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook value


def test_paired_bootstrap_interval(ev):
    a = np.zeros(50, bool)
    b = np.ones(50, bool)
    assert ev.bootstrap_diff(a, b) == (1.0, 1.0, 1.0)  # every pair improves: no spread
    rng = np.random.default_rng(3)
    a, b = rng.random(400) < 0.3, rng.random(400) < 0.5
    mean, lo, hi = ev.bootstrap_diff(a, b, n_boot=4000)
    d = b.astype(float) - a.astype(float)
    assert mean == pytest.approx(d.mean())
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))  # the normal approximation the percentile interval approaches
    assert lo == pytest.approx(d.mean() - half, abs=0.015) and hi == pytest.approx(d.mean() + half, abs=0.015)
    assert ev.bootstrap_diff(b, a, n_boot=4000)[0] == pytest.approx(-mean)


def test_prompt_sets_name_distinct_subjects_and_their_words(ev):
    prompts, specs = ev.subject_prompts(20, 3, seed=5)
    assert prompts == ev.subject_prompts(20, 3, seed=5)[0]  # fixed by the seed
    for prompt, spec in zip(prompts, specs, strict=True):
        shapes = spec.split(",")
        assert len(shapes) == len(set(shapes)) == 3 and all(s in prompt for s in shapes)
    two, _ = ev.subject_prompts(4, 2, seed=0)
    assert all(p.count(" and ") == 1 for p in two)
    words = ev.colour_and_shape_specs(["a red circle and a blue square", "a * and a green triangle"])
    assert words == ["red,circle,blue,square", "*,green,triangle"]
    star_prompts, star_specs = ev.placeholder_prompts(6, seed=2)
    assert all(p.startswith("a * and a ") and s.startswith("*,") for p, s in zip(star_prompts, star_specs))
