"""SynGen: the loss on the official maps, the distance against torch's own KL, and the method against the goldens."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, require_fixture

from ldm.guidance.syngen.loss import Binding, binding_loss, pixel_distributions, symmetric_kl

SYNGEN = FIXTURES / "guidance" / "syngen"
RUNS = ("cat_frog", "bowl_table", "circle_square_entities")


def golden_log() -> dict:
    return json.loads(require_fixture(SYNGEN / "log.json").read_text())


def golden(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require_fixture(SYNGEN / f"{name}.safetensors")))


def official_bindings(subtrees: list) -> list[Binding]:
    """The official ``subtrees_indices`` ([modifier..., noun], an entry a position or a list of them) as bindings."""

    def group(entry) -> tuple[int, ...]:
        return tuple(entry) if isinstance(entry, list) else (entry,)

    return [Binding(group(s[-1]), tuple(group(m) for m in s[:-1])) for s in subtrees]


def test_symmetric_kl_is_torch_categorical_kl():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 256, generator=gen) * 100
    p, q = torch.distributions.Categorical(probs=a), torch.distributions.Categorical(probs=b)
    expected = (torch.distributions.kl_divergence(p, q) + torch.distributions.kl_divergence(q, p)) / 2
    ours = symmetric_kl(a / a.sum(), b / b.sum())
    assert torch.allclose(ours, expected, rtol=1e-6)
    assert float(symmetric_kl(a / a.sum(), a / a.sum())) == 0.0


def test_pixel_distributions_sum_to_one_and_ignore_scale():
    maps = torch.rand(16, 16, 77, generator=torch.Generator().manual_seed(1))
    dist = pixel_distributions(maps, [1, 2, 5])
    assert dist.shape == (3, 256) and torch.allclose(dist.sum(-1), torch.ones(3))
    assert torch.allclose(pixel_distributions(maps * 100, [1, 2, 5]), dist)
    assert torch.equal(dist[2], (maps[:, :, 5] / maps[:, :, 5].sum()).flatten())


@pytest.mark.parametrize("run", RUNS)
def test_loss_on_the_official_maps_matches_the_official_loss(run):
    log = golden_log()["runs"][run]
    maps = golden(run)["maps"]  # [3, 16, 16, n]: start token, prompt, end token
    n_prompt = maps.shape[-1] - 2
    bindings = official_bindings(log["subtrees_indices"])
    for step in range(maps.shape[0]):
        loss = binding_loss(maps[step], bindings, range(1, n_prompt + 1))
        expected = log["losses"][step]
        assert abs(float(loss) - expected) <= 1e-5 * abs(expected), (run, step, float(loss), expected)


def test_loss_terms_by_hand():
    """Two one-position words and a third word: L = d(m,n) - (d(m,u) + d(n,u)) / 2; a bare noun: -d(n,u)."""
    maps = torch.rand(4, 4, 5, generator=torch.Generator().manual_seed(2)) + 0.1
    dist = pixel_distributions(maps, [1, 2, 3])
    d = lambda i, j: symmetric_kl(dist[i], dist[j])  # noqa: E731
    loss = binding_loss(maps, [Binding((2,), ((1,),))], [1, 2, 3])
    assert torch.allclose(loss, d(0, 1) - (d(0, 2) + d(1, 2)) / 2)
    assert torch.allclose(binding_loss(maps, [Binding((2,))], [1, 2, 3]), -(d(1, 0) + d(1, 2)) / 2)
    grouped = binding_loss(maps, [Binding((3,), ((1, 2),))], [1, 2, 3])  # no outside word: L_pos only
    assert torch.allclose(grouped, torch.maximum(d(0, 2), d(1, 2)))
    assert float(binding_loss(maps, [], [1, 2, 3])) == 0.0
    with pytest.raises(ValueError, match="not prompt positions"):
        binding_loss(maps, [Binding((7,), ((1,),))], [1, 2, 3])


def test_loss_gradient_flows_to_the_maps():
    maps = (torch.rand(4, 4, 5, generator=torch.Generator().manual_seed(3)) + 0.1).requires_grad_(True)
    binding_loss(maps, [Binding((2,), ((1,),))], [1, 2, 3, 4]).backward()
    assert maps.grad is not None and maps.grad[:, :, 1:5].abs().sum() > 0 and maps.grad[:, :, 0].abs().sum() == 0
