"""Core paths on every device: golden DDIM sampling, an Attend-and-Excite step and an inversion step, on the CPU and
on CUDA when present (``scripts/gpu_check.sh`` runs the CUDA cases; they skip elsewhere)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, _golden_model, load_golden, rel_err, require_fixture

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.guidance.attend_and_excite import AttendAndExcite
from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device; on CUDA with TF32 off (float32 kernels, as on the CPU), restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device(request.param)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def model(device):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    return copy.deepcopy(_golden_model("sd")).to(device)


def test_ddim_sampling_matches_golden(model, device):
    inputs = {k: v.to(device) for k, v in load_golden("tiny_sd", "inputs.safetensors").items()}
    golden = load_golden("tiny_sd", "ddim_cfg.safetensors")
    samples, _ = DDIMSampler(model).sample(
        10, batch_size=2, shape=(4, 32, 32), conditioning=inputs["c"], x_T=inputs["x_T"], verbose=False,
        unconditional_guidance_scale=5.0, unconditional_conditioning=inputs["uc"],
    )  # fmt: skip
    # Other float32 kernels on CUDA (other summation orders) get a looser bound than the CPU goldens' 2e-5.
    assert rel_err(samples.cpu(), golden["samples"]) < (2e-5 if device.type == "cpu" else 2e-4)


def test_attend_and_excite_step_lowers_the_loss(model, device):
    config = AttendExciteConfig(attention_res=8, max_iter_to_alter=1, thresholds={}, schedule_steps=None)
    guidance = AttendAndExcite(model.model.diffusion_model, config, token_indices=[((2,), (5,))])
    with torch.no_grad():
        c = model.get_learned_conditioning(["a cat and a frog"])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.tensor([600], device=device)
    z = guidance(x, t, 0, 10, c)
    before = guidance.records[0]["groups"][0]["loss"]
    guidance(z, t, 0, 10, c)
    after = guidance.records[1]["groups"][0]["loss"]
    assert z.device.type == device.type and torch.isfinite(z).all()
    assert after < before


def test_inversion_step_trains_only_the_placeholder(model, device):
    model.train()
    frozen = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    optimizer = model.configure_optimizers()
    batch = {"image": (torch.rand(1, 64, 64, 3) * 2 - 1).to(device), "caption": ["a photo of *"]}
    (vector,) = model.embedding_manager.embedding_parameters()
    start = vector.detach().clone()
    loss, _ = model.shared_step(batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(vector.detach(), start)
    assert all(torch.equal(v, frozen[k]) for k, v in model.model.state_dict().items())
