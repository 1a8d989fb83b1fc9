"""Half precision on the CPU (bf16): half-precision weights and autocast for sampling and Attend-and-Excite, and a
bf16-autocast inversion step (what Lightning's ``--precision bf16-mixed`` runs). Compared with float32 on the
goldens' tiny SD model; the relative differences are printed (``-s``) and bounded loosely."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, _golden_model, rel_err, require_fixture

from ldm import inference
from ldm.models.diffusion.guidance.attend_and_excite import AttendAndExcite
from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig
from ldm.precision import cast_model, model_dtype, precision_scope

SHAPE = (4, 8, 8)
AE = AttendExciteConfig(attention_res=4, max_iter_to_alter=3, thresholds={0: 0.3, 2: 0.5}, max_refinement_steps=3,
                        softmax_scale=10.0, schedule_steps=None)  # fmt: skip


@pytest.fixture(scope="module")
def models():
    require_fixture(GOLDEN_WEIGHTS["sd"])
    full = _golden_model("sd")
    half = cast_model(copy.deepcopy(full), "bf16")
    return full, half


def sample(model, precision: str, ae: bool, sampler_name: str = "ddim"):
    sampler = inference.make_sampler(model, sampler_name)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    x_T = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])  # [2, 4, 8, 8] float32
    with inference.sampling_scope(model, precision):
        return inference.sample_prompts(
            model, sampler, ["a cat and a frog", "a red dog"], SHAPE, 4, 5.0, x_T=x_T, generator=gens,
            ae_tokens=["cat,frog", "red,dog"] if ae else "", ae_config=AE,
        )  # fmt: skip


def test_cast_keeps_float32_where_it_matters(models):
    _, half = models
    assert model_dtype(half.model) == model_dtype(half.first_stage_model) == torch.bfloat16
    assert model_dtype(half.cond_stage_model) == torch.bfloat16
    assert half.alphas_cumprod.dtype == torch.float32  # the schedule stays float32
    assert all(p.dtype == torch.float32 for p in half.embedding_manager.parameters())
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        cast_model(copy.deepcopy(half), "fp16")
    with pytest.raises(ValueError, match="--precision 'half'"):
        cast_model(half, "half")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "euler_a"])
@pytest.mark.parametrize("precision", ["bf16", "autocast"])
def test_bf16_sampling_close_to_float32(models, precision, sampler):
    full, half = models
    ref = sample(full, "full", ae=False, sampler_name=sampler)
    out = sample(half if precision == "bf16" else full, precision, ae=False, sampler_name=sampler)
    assert out.latents.dtype == torch.float32 and out.images.dtype == torch.float32  # the sampler's arithmetic
    assert torch.isfinite(out.latents).all() and torch.isfinite(out.images).all()
    latent_err, image_err = rel_err(out.latents, ref.latents), rel_err(out.images, ref.images)
    print(f"\n{precision} {sampler}: relative difference to float32: latents {latent_err:.4f}, images {image_err:.4f}")
    assert 0 < latent_err < 0.1 and image_err < 0.1  # bf16 really ran (not 0), and stays close


def test_autocast_is_bf16_on_cpu():
    with precision_scope("cpu", "autocast"):
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == torch.bfloat16
    with precision_scope("cpu", "full"):
        assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "autocast"])
def test_bf16_attend_and_excite_same_steps_as_float32(models, precision):
    full, half = models
    ref = sample(full, "full", ae=True)
    out = sample(half if precision == "bf16" else full, precision, ae=True)
    steps = [[r["step"] for r in b.guidance.records] for b in (ref, out)]
    assert steps[0] == steps[1] and steps[0]  # the same guided steps
    losses = [[g["loss"] for r in b.guidance.records for g in r["groups"]] for b in (ref, out)]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses) and torch.isfinite(out.latents).all()
    assert out.latents.dtype == torch.float32
    updates = [sum("update_loss" in g for r in b.guidance.records for g in r["groups"]) for b in (ref, out)]
    assert updates[0] == updates[1] > 0  # the latent was moved as often
    loss_err = max(abs(a - b) for a, b in zip(*losses, strict=True))
    latent_err = rel_err(out.latents, ref.latents)
    print(f"\nA&E {precision}: max loss difference {loss_err:.4f}, latents relative difference {latent_err:.4f}")
    assert loss_err < 0.1 and 0 < latent_err < 0.15


def test_ae_gradient_reaches_a_float32_latent_through_a_bf16_unet(models):
    _, half = models
    unet = half.model.diffusion_model
    guidance = AttendAndExcite(unet, AE, token_indices=[((2,), (5,))])
    with torch.no_grad():
        c = half.get_learned_conditioning(["a cat and a frog"])  # [1, 77, 32] bf16
    assert c.dtype == torch.bfloat16
    x = torch.randn(1, *SHAPE)
    z = guidance(x, torch.tensor([500]), 0, 4, c)
    assert z.dtype == torch.float32 and torch.isfinite(z).all() and not torch.equal(z, x)


def test_bf16_mixed_inversion_step(models):
    """One inversion step under bf16 autocast (Lightning's bf16-mixed): finite loss, float32 gradient on ``*``."""
    full, _ = models
    model = copy.deepcopy(full).train()
    batch = {"image": torch.rand(1, 64, 64, 3) * 2 - 1, "caption": ["a photo of *"]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.shared_step(batch)
    loss.backward()
    (vector,) = model.embedding_manager.embedding_parameters()
    assert torch.isfinite(loss) and vector.dtype == torch.float32
    assert vector.grad is not None and vector.grad.dtype == torch.float32
    assert torch.isfinite(vector.grad).all() and vector.grad.abs().sum() > 0
