import logging

import numpy as np
import pytest
import torch

from ldm.models.diffusion.schedule import ddim_alphas, ddim_sigmas, make_beta_schedule, make_ddim_timesteps


@pytest.mark.parametrize("steps", [1, 7, 10, 50, 200, 300, 333, 999, 1000])
@pytest.mark.parametrize("method", ["uniform", "uniform_exact", "quad"])
def test_ddim_timesteps_always_in_range(steps, method):
    ts = make_ddim_timesteps(method, steps, 1000)
    assert ts.min() >= 0 and ts.max() <= 999
    assert np.all(np.diff(ts) > 0) or method == "quad"


def test_uniform_matches_original_rule_and_warns(caplog):
    # The original: c = T // S; range(0, T, c) + 1.
    assert list(make_ddim_timesteps("uniform", 50, 1000)) == list(range(1, 1000, 20))
    with caplog.at_level(logging.WARNING):
        ts7 = make_ddim_timesteps("uniform", 7, 1000)
    assert list(ts7) == [1, 143, 285, 427, 569, 711, 853, 995]
    assert "runs 8 steps" in caplog.text
    ts300 = make_ddim_timesteps("uniform", 300, 1000)
    assert len(ts300) == 333 and ts300.max() == 997  # the original's out-of-range step 1000 is dropped


@pytest.mark.parametrize("steps", [7, 13, 300, 1000])
def test_uniform_exact_gives_exactly_s_steps(steps):
    assert len(make_ddim_timesteps("uniform_exact", steps, 1000)) == steps


def test_linear_betas_are_scaled_linear():
    betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
    expected = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert np.allclose(betas, expected, rtol=1e-12)


def test_ddim_sigmas_zero_for_eta_zero_and_formula():
    ac = torch.tensor(np.cumprod(1 - make_beta_schedule("linear", 1000, 0.00085, 0.012)), dtype=torch.float32)
    ts = make_ddim_timesteps("uniform", 10, 1000)
    a, a_prev = ddim_alphas(ac, ts)
    assert torch.equal(a_prev[1:], a[:-1]) and a_prev[0] == ac[0]
    assert torch.all(ddim_sigmas(a, a_prev, 0.0) == 0)
    i = 5
    expected = float(np.sqrt((1 - a_prev[i].item()) / (1 - a[i].item()) * (1 - a[i].item() / a_prev[i].item())))
    assert ddim_sigmas(a, a_prev, 1.0)[i].item() == pytest.approx(expected, rel=1e-6)
