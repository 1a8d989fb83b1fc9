"""Divide & Bind's loss functions: against the official code's values on its own recorded maps, and on hand cases."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, rel_err, require_fixture
from safetensors.torch import load_file

from ldm.guidance.divide_bind.config import DivideBindConfig, scale_schedule
from ldm.guidance.divide_bind.loss import (
    binding_distributions,
    binding_weight,
    divide_bind_loss,
    group_maps,
    jensen_shannon,
    resize_nearest,
    total_variation,
)

GOLDEN_DB = FIXTURES / "guidance" / "divide_bind"


def recorded_evaluations() -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """The official loss evaluations whose maps were stored (batch run), with those maps."""
    log = json.loads(require_fixture(GOLDEN_DB / "log.json").read_text())
    tensors = load_file(str(require_fixture(GOLDEN_DB / "batch.safetensors")))
    return [(e, tensors) for e in log["logs"]["batch"]["evaluations"] if "maps_key" in e]


def official_loss_inputs(e: dict, tensors: dict[str, torch.Tensor]):
    """Our subject and attribute maps from the official aggregated maps of one evaluation."""
    key = e["maps_key"]
    subjects = group_maps(tensors[f"maps_{key}"], [(i,) for i in e["indices"]])  # [K, 16, 16]
    colors = e["color_index_list"] or [0] * len(e["indices"])
    attributes = [None if c == 0 else group_maps(tensors[f"color_maps_{key}"], [(c,)])[0] for c in colors]
    return subjects, attributes


def test_recorded_steps_cover_every_weight_and_both_quantiles():
    evals = [e for e, _ in recorded_evaluations()]
    assert sorted({e["step"] for e in evals}) == [0, 1, 10, 20]  # weights 1, 5, 10
    assert any(e["color_index_list"] and 0 in e["color_index_list"] for e in evals)  # a subject without attribute


@pytest.mark.parametrize("index", range(8))
def test_loss_matches_official_on_its_maps(index):
    evals = recorded_evaluations()
    e, tensors = evals[index]
    cfg = DivideBindConfig()
    subjects, attributes = official_loss_inputs(e, tensors)
    loss, tv = divide_bind_loss(subjects, attributes, binding_weight(cfg.bind_weights, e["step"]))
    assert rel_err(tv, torch.tensor(e["tv"])) < 1e-5
    assert abs(float(tv.min()) - e["indicator"]) <= 1e-5 * abs(e["indicator"])
    assert abs(float(loss) - e["loss"]) <= 1e-5 * abs(e["loss"])
    weight = binding_weight(cfg.bind_weights, e["step"])
    for k in range(len(e["indices"])):  # each subject alone: -TV (+ weighted JSD)
        own, _ = divide_bind_loss(subjects[k : k + 1], attributes[k : k + 1], weight)
        assert abs(float(own) - e["subject_loss"][k]) <= 1e-5 * abs(e["subject_loss"][k])


def test_tv_quirk_and_paper_tv_on_a_hand_map():
    a = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])[None]  # [1, 3, 3]
    horizontal = (1 + 1 + 1 + 1 + 0 + 0) / 6
    neighbours = (1 + 1 + 1 + 1 + 0 + 1) / 6  # rows 0-1, 1-2
    last_row = (1 + 0 + 1 + 0 + 0 + 0) / 6  # row 2 against rows 1 and 2
    assert torch.allclose(total_variation(a, last_row=False), torch.tensor([horizontal + neighbours]))
    assert torch.allclose(total_variation(a, last_row=True), torch.tensor([horizontal + last_row]))
    assert float(total_variation(torch.full((1, 4, 4), 0.3))[0]) == 0.0


def test_jensen_shannon_properties():
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(64, generator=g) + 0.01, torch.rand(64, generator=g) + 0.01
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    by_hand = 0.5 * float((p * (p / m).log()).sum() + (q * (q / m).log()).sum())
    assert abs(float(jensen_shannon(p, q)) - by_hand) < 1e-6
    assert abs(float(jensen_shannon(p, q)) - float(jensen_shannon(q, p))) < 1e-7
    assert abs(float(jensen_shannon(p, p))) < 1e-7
    assert 0 < float(jensen_shannon(p, q)) < float(torch.log(torch.tensor(2.0)))


def test_binding_distributions_cut_at_the_subject_quantile():
    g = torch.Generator().manual_seed(1)
    s, a = torch.rand(4, 4, generator=g), torch.rand(4, 4, generator=g) * 3
    for tv, quantile in ((0.05, 0.3), (0.5, 0.2)):
        p, q = binding_distributions(s, a, tv)
        p0 = torch.softmax(s.flatten(), 0)
        q0 = torch.softmax((a / a.max() * s.max()).flatten(), 0)
        tau = quantile * p0.max()
        assert torch.allclose(p, torch.clamp(p0 - tau, min=0) + 1e-5)
        assert torch.allclose(q, torch.clamp(q0 - tau, min=0) + 1e-5)


def test_loss_is_the_worst_subject_and_binding_adds_weighted_jsd():
    g = torch.Generator().manual_seed(2)
    subjects, attr = torch.rand(2, 8, 8, generator=g), torch.rand(8, 8, generator=g)
    tv = total_variation(subjects)
    plain, _ = divide_bind_loss(subjects, [None, None], weight=5.0)
    assert torch.allclose(plain, (-tv).max())
    bound, _ = divide_bind_loss(subjects, [attr, None], weight=5.0)
    jsd = jensen_shannon(*binding_distributions(subjects[0], attr, float(tv[0])))
    assert torch.allclose(bound, torch.stack([-tv[0] + 5.0 * jsd, -tv[1]]).max())


def test_binding_weight_schedule_and_rescaling():
    cfg = DivideBindConfig()
    assert [binding_weight(cfg.bind_weights, i) for i in (0, 9, 10, 19, 20, 49)] == [1, 1, 5, 5, 10, 10]
    short = scale_schedule(cfg, 10)
    assert short.thresholds == {0: 0.05, 2: 0.2, 4: 0.3} and short.bind_weights == {0: 1.0, 2: 5.0, 4: 10.0}
    assert short.max_iter_to_alter == 5 and short.schedule_steps is None
    assert scale_schedule(short, 7) is short


def test_nearest_resize_takes_every_other_pixel():
    maps = torch.arange(32 * 32 * 3, dtype=torch.float32).reshape(32, 32, 3)
    assert torch.equal(resize_nearest(maps, 16), maps[::2, ::2])
    assert resize_nearest(maps, 32) is maps
