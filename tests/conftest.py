"""Shared test helpers: where the fixtures live, and the goldens' tiny models."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # carried in the repository (tests/fixtures/README.md)
GOLDEN = FIXTURES / "golden"
GOLDEN_WEIGHTS = {"sd": GOLDEN / "weights" / "tiny_sd.ckpt", "ldm": GOLDEN / "weights" / "tiny_ldm.safetensors"}

# The test models are tiny: one intra-op thread is as fast as two, and far faster when the other core is busy
# (oversubscribed OpenMP threads spin). The goldens allow the 1-vs-2-thread difference (<= 5e-6).
torch.set_num_threads(1)


def require_fixture(path: Path) -> Path:
    """The fixture path; a missing one fails the test (the fixtures ship in tests/fixtures, nothing is skipped)."""
    if not path.exists():
        pytest.fail(f"fixture {path} is missing: tests/fixtures/ is part of the repository (see its README.md)")
    return path


def rel_err(x: torch.Tensor, golden: torch.Tensor) -> float:
    """max|x - golden| / max|golden|, the goldens' comparison metric."""
    return float((x.float() - golden.float()).abs().max() / golden.float().abs().max())


@lru_cache(maxsize=2)
def _golden_model(name: str):
    from omegaconf import OmegaConf

    from ldm.util import load_model_from_config

    config = OmegaConf.load(REPO / "configs" / "tests" / f"golden_tiny_{name}.yaml")
    model = load_model_from_config(config, GOLDEN_WEIGHTS[name], strict=True)
    return model.eval()


@pytest.fixture(params=["sd", "ldm"])
def golden_name(request) -> str:
    return request.param


@pytest.fixture
def golden_model(golden_name: str):
    require_fixture(GOLDEN_WEIGHTS[golden_name])
    return _golden_model(golden_name)


def load_golden(name: str, file: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require_fixture(GOLDEN / name / file)))


def assert_sampler_matches(sampler, steps: int, scale: float, inputs: dict, golden: dict, shape: tuple) -> None:
    """Run ``sampler.sample`` as the reference runs did (batch 2, eta 0, ``x_T``/``c``/``uc`` from ``inputs``) and
    compare timesteps exactly and samples (and ``x_inter``/``pred_x0`` where the golden has them) within 2e-5."""
    samples, intermediates = sampler.sample(
        steps, batch_size=2, shape=shape, conditioning=inputs["c"], eta=0.0, x_T=inputs["x_T"],
        unconditional_guidance_scale=scale, unconditional_conditioning=inputs["uc"], log_every_t=1, verbose=False,
    )  # fmt: skip
    assert list(sampler.ddim_timesteps) == golden["timesteps"].tolist()
    assert rel_err(samples, golden["samples"]) < 2e-5
    if "x_inter" in golden:
        x_inter = torch.stack(intermediates["x_inter"])
        assert x_inter.shape == golden["x_inter"].shape
        assert rel_err(x_inter, golden["x_inter"]) < 2e-5
        pred_x0 = torch.stack(intermediates["pred_x0"][1:])  # entry 0 is x_T, as in the original
        assert rel_err(pred_x0, golden["pred_x0"]) < 2e-5


@pytest.fixture
def word_max(tmp_path, monkeypatch):
    """tests/test_guidance_plugins.py's toy method as a folder of its own (outside the repository: nothing in the
    project is edited), registered with the one call the registry line makes; unregistered afterwards."""
    import sys
    import textwrap

    from test_guidance_plugins import TOY_METHOD

    from ldm import guidance

    folder = tmp_path / "plugins" / "word_max"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(TOY_METHOD))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    import word_max

    guidance.register(word_max.METHOD)
    yield word_max
    guidance.unregister("word_max")
    sys.modules.pop("word_max", None)
