"""CONFORM: the contrastive loss against the official pipeline's recorded maps and an independent computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FIXTURES, require_fixture
from safetensors.torch import load_file

from ldm.guidance.conform.loss import conform_loss, group_embeddings, info_nce_loss

CONFORM = FIXTURES / "guidance" / "conform"
GROUPS = ((2, 3), (6, 7))  # "a red cat and a blue frog": (red, cat), (blue, frog)


def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(require_fixture(CONFORM / f"{name}.safetensors")))


def golden_log() -> dict:
    return json.loads(require_fixture(CONFORM / "log.json").read_text())


# --- the loss on recorded maps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("run, softmax_normalize", [("notebook", False), ("script", True)])
@pytest.mark.parametrize("step", [0, 1])
def test_loss_matches_official_on_recorded_maps(run: str, softmax_normalize: bool, step: int):
    maps = golden(f"{run}_sample0")
    ref = golden_log()["runs"][f"{run}_sample0"][step]["samples"][0]
    previous = maps.get(f"previous_maps_step{step}")
    assert (previous is not None) == ref["has_previous_maps"] == (step > 0)
    loss = conform_loss(maps[f"maps_step{step}"], previous, GROUPS, softmax_normalize=softmax_normalize)
    assert abs(float(loss) - ref["loss"]) <= 1e-5 * abs(ref["loss"])


def brute_force_info_nce(emb: torch.Tensor, labels: list[int], tau: float) -> float:
    """The InfoNCE of the module docstring written out with loops in float64 (an independent computation)."""
    e = emb.double()
    unit = [e[i] / e[i].norm() for i in range(len(labels))]
    s = [[float(unit[i] @ unit[j]) / tau for j in range(len(labels))] for i in range(len(labels))]
    terms = []
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p != a and labels[p] == labels[a]:
                den = math.exp(s[a][p]) + sum(math.exp(s[a][n]) for n in negatives)
                terms.append(-math.log(math.exp(s[a][p]) / den))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 1, 2, 2], [0, 1, 0, 1, 2, 2, 2, 0]])
def test_info_nce_equals_the_written_out_formula(labels: list[int]):
    emb = torch.rand(len(labels), 40, generator=torch.Generator().manual_seed(len(labels)))
    ours = info_nce_loss(emb, torch.tensor(labels), temperature=0.3)
    assert abs(float(ours) - brute_force_info_nce(emb, labels, 0.3)) < 1e-5


def test_no_positive_or_no_negative_pair_is_zero_with_a_graph():
    emb = torch.rand(3, 8, requires_grad=True)
    for labels in ([0, 1, 2], [0, 0, 0]):
        loss = info_nce_loss(emb, torch.tensor(labels), 0.5)
        assert loss.item() == 0.0 and loss.requires_grad


def test_memory_makes_singletons_positive():
    """One word per group has no positive pair alone; with the previous step's maps it is its own positive."""
    maps = golden("notebook_sample0")
    singles = ((3,), (7,))
    assert float(conform_loss(maps["maps_step1"], None, singles)) == 0.0
    assert float(conform_loss(maps["maps_step1"], maps["previous_maps_step1"], singles)) > 0.0


def test_embeddings_keep_positions_1_to_75_and_label_groups():
    maps = torch.rand(4, 4, 77, generator=torch.Generator().manual_seed(0))
    emb, labels = group_embeddings(maps, ((1, 75), (2,)), smooth_attentions=False)
    assert labels.tolist() == [0, 0, 1]
    assert torch.equal(emb[1], maps[:, :, 75].flatten())
    soft, _ = group_embeddings(maps, ((1, 75), (2,)), softmax_normalize=True, smooth_attentions=False)
    expected = torch.softmax(100 * maps[:, :, 1:76], dim=-1)[:, :, 0].flatten()  # position 76 is not in the softmax
    assert torch.allclose(soft[0], expected)
    with pytest.raises(ValueError, match="twice"):
        group_embeddings(maps, ((2, 3), (3,)))
