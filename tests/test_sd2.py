"""Stable Diffusion 2.x against the reference code's outputs (tests/fixtures/sd2/, made by make_sd2_goldens.py).

Tiny random-weight models of both parameterizations (eps, v) share one checkpoint in the released layout.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.ddpm_sampler import DDPMSampler
from ldm.models.diffusion.plms import PLMSSampler
from tests.conftest import FIXTURES, REPO, assert_sampler_matches, rel_err, require_fixture

SD2 = FIXTURES / "sd2"
WEIGHTS = SD2 / "weights" / "tiny_sd2.safetensors"
PROMPTS = ["a photograph of an astronaut riding a horse", "a cat and a frog"]
SAMPLER_RUNS = {
    "ddim_cfg_10": (10, 5.0),
    "ddim_nocfg_10": (10, 1.0),
    "ddim_cfg_25": (25, 5.0),
    "ddim_nocfg_25": (25, 1.0),
}


def golden(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require_fixture(SD2 / name)))


@lru_cache(maxsize=2)
def _tiny(parameterization: str):
    from ldm.util import load_model_from_config

    config = OmegaConf.load(REPO / "configs" / "tests" / f"tiny_sd2_{parameterization}.yaml")
    return load_model_from_config(config, require_fixture(WEIGHTS), strict=True).eval()


@pytest.fixture(params=["eps", "v"])
def parameterization(request) -> str:
    return request.param


@pytest.fixture
def tiny(parameterization: str):
    return _tiny(parameterization)


def test_tiny_checkpoint_loads_strictly(tiny, parameterization):
    from ldm.util import load_state_dict_file

    sd = load_state_dict_file(WEIGHTS)
    own = tiny.state_dict()
    assert set(sd) == set(own)
    assert all(torch.equal(own[k], sd[k].float()) for k in sd)
    assert tiny.parameterization == parameterization


def test_apply_model_matches_reference(tiny, parameterization):
    inputs = golden(f"tiny_sd2_{parameterization}/inputs.safetensors")
    expected = golden(f"tiny_sd2_{parameterization}/model_output.safetensors")["out"]
    with torch.no_grad():
        out = tiny.apply_model(inputs["x_eps"], inputs["t_eps"].long(), inputs["c"])
    assert rel_err(out, expected) < 1e-5


def test_conditioning_matches_reference(tiny, parameterization):
    inputs = golden(f"tiny_sd2_{parameterization}/inputs.safetensors")
    with torch.no_grad():
        assert rel_err(tiny.get_learned_conditioning(PROMPTS), inputs["c"]) < 1e-5
        assert rel_err(tiny.get_learned_conditioning(["", ""]), inputs["uc"]) < 1e-5


def test_first_stage_matches_reference():
    inputs = golden("tiny_sd2_eps/inputs.safetensors")
    expected = golden("tiny_sd2_vae.safetensors")
    model = _tiny("eps")
    with torch.no_grad():
        decoded = model.decode_first_stage(inputs["z_dec"])
        posterior = model.encode_first_stage(inputs["img_enc"])
    assert rel_err(decoded, expected["decoded"]) < 1e-5
    assert rel_err(posterior.mean, expected["enc_mean"]) < 1e-5
    assert rel_err(posterior.logvar, expected["enc_logvar"]) < 1e-5


@pytest.mark.parametrize("run", list(SAMPLER_RUNS))
def test_ddim_matches_reference(tiny, parameterization, run):
    steps, scale = SAMPLER_RUNS[run]
    inputs = golden(f"tiny_sd2_{parameterization}/inputs.safetensors")
    expected = golden(f"tiny_sd2_{parameterization}/{run}.safetensors")
    assert_sampler_matches(DDIMSampler(tiny), steps, scale, inputs, expected, shape=(4, 16, 16))


# --- v-parameterization formulas against an independent float64 computation --------------------------------------
def _abar_float64() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.0120**0.5, 1000, dtype=np.float64) ** 2  # SD's "linear" (sqrt-spaced)
    return np.cumprod(1.0 - betas)


def test_v_formulas_match_float64():
    model = _tiny("v")
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 16, 16, generator=gen), torch.randn(3, 4, 16, 16, generator=gen)
    t = torch.tensor([0, 500, 999])
    abar = torch.from_numpy(_abar_float64()[t.numpy()]).reshape(3, 1, 1, 1)
    x_t64 = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    v64 = abar.sqrt() * eps.double() - (1 - abar).sqrt() * x0.double()
    x_t = model.q_sample(x0, t, eps)
    assert rel_err(x_t, x_t64) < 1e-6
    assert rel_err(model.get_v(x0, eps, t), v64) < 1e-6
    v = v64.float()
    assert rel_err(model.predict_start_from_z_and_v(x_t64.float(), t, v), x0) < 1e-5
    assert rel_err(model.predict_eps_from_z_and_v(x_t64.float(), t, v), eps) < 1e-5
    assert torch.equal(model.eps_from_model_output(x_t, t, v), model.predict_eps_from_z_and_v(x_t, t, v))
    assert torch.equal(_tiny("eps").eps_from_model_output(x_t, t, eps), eps)
    # x0-parameterization: eps from a predicted x0 inverts predict_start_from_noise
    x0_pred = model.predict_start_from_noise(x_t64.float(), t, eps)
    assert rel_err(model.predict_eps_from_start(x_t64.float(), t, x0_pred), eps) < 1e-4


def test_v_training_target_is_v(monkeypatch):
    """p_losses of the v model regresses onto sqrt(abar) eps - sqrt(1 - abar) x0: with a zero denoiser output the
    simple loss is mean(v^2), computed here in float64."""
    model = _tiny("v")
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([10, 900])
    monkeypatch.setattr(model, "apply_model", lambda x, tt, c: torch.zeros_like(x))
    _, logs = model.p_losses(x0, None, t, noise=eps)
    abar = torch.from_numpy(_abar_float64()[t.numpy()]).reshape(2, 1, 1, 1)
    v64 = abar.sqrt() * eps.double() - (1 - abar).sqrt() * x0.double()
    prefix = "train" if model.training else "val"
    assert abs(float(logs[f"{prefix}/loss_simple"]) - float((v64**2).mean())) < 1e-5
    assert model.lvlb_weights.eq(1.0).all()


def _eps_twin_of_v_model(monkeypatch):
    """The eps-config model with the same weights whose denoiser returns eps computed from the v model's output in
    float64 (DDIM-style conversion done outside the samplers)."""
    v_model, eps_model = _tiny("v"), _tiny("eps")
    abar = torch.from_numpy(_abar_float64())

    def apply_model(x, t, c):
        a = abar[t].reshape(-1, 1, 1, 1)
        v = v_model.apply_model(x, t, c).double()
        return (a.sqrt() * v + (1 - a).sqrt() * x.double()).float()

    monkeypatch.setattr(eps_model, "apply_model", apply_model)
    return v_model, eps_model


@pytest.mark.parametrize("sampler_cls,steps", [(PLMSSampler, 10), (DDIMSampler, 10), (DDPMSampler, 6)])
def test_v_sampling_equals_eps_conversion(monkeypatch, sampler_cls, steps):
    """PLMS (which the reference refuses for v), DDIM and DDPM on the v model equal the same sampler on a denoiser
    that returns eps converted from v by hand: the samplers' single conversion point works for every sampler."""
    v_model, eps_twin = _eps_twin_of_v_model(monkeypatch)
    inputs = golden("tiny_sd2_v/inputs.safetensors")
    kwargs = dict(
        batch_size=2,
        shape=(4, 16, 16),
        conditioning=inputs["c"],
        x_T=inputs["x_T"],
        unconditional_guidance_scale=5.0,
        unconditional_conditioning=inputs["uc"],
        verbose=False,
    )
    if sampler_cls is not DDPMSampler:
        kwargs["eta"] = 0.0
    ours, _ = sampler_cls(v_model).sample(steps, generator=torch.Generator().manual_seed(3), **kwargs)
    twin, _ = sampler_cls(eps_twin).sample(steps, generator=torch.Generator().manual_seed(3), **kwargs)
    assert rel_err(ours, twin) < 2e-5
    assert ours.abs().max() > 0


# --- the OpenCLIP tower and tokenizer -------------------------------------------------------------------------------
def test_tokenizer_matches_reference():
    from ldm.modules.encoders.openclip_tokenizer import OpenCLIPTokenizer

    fixture = json.loads(require_fixture(SD2 / "tokenizer.json").read_text(encoding="utf-8"))
    ids = OpenCLIPTokenizer().ids(fixture["prompts"])
    expected = torch.tensor(fixture["ids"])
    mismatched = [p for p, a, b in zip(fixture["prompts"], ids, expected) if not torch.equal(a, b)]
    assert not mismatched
    assert ids.shape == (len(fixture["prompts"]), 77)


def test_tower_layers_match_reference():
    from ldm.modules.encoders.openclip import tower_outputs

    expected = golden("tiny_sd2_text.safetensors")
    inputs = golden("tiny_sd2_eps/inputs.safetensors")
    embedder = _tiny("eps").cond_stage_model
    with torch.no_grad():
        random_ids = tower_outputs(embedder, inputs["ids_random"])
        prompt_ids = embedder.tokenize(PROMPTS)
        prompts = tower_outputs(embedder, prompt_ids)
    assert torch.equal(prompt_ids.cpu(), expected["ids_prompts"])
    for layer in ("last", "penultimate"):
        assert rel_err(random_ids[layer], expected[f"{layer}_random_ids"]) < 1e-5
        assert rel_err(prompts[layer], expected[f"{layer}_prompts"]) < 1e-5
    assert rel_err(random_ids["last"], random_ids["penultimate"]) > 1e-2  # the layers differ


def test_tower_placeholder_substitution_matches_reference():
    """A vector substituted at the token-embedding stage (the textual-inversion hook) gives the reference output."""
    expected = golden("tiny_sd2_text.safetensors")
    vector = golden("tiny_sd2_eps/inputs.safetensors")["placeholder_vector"]  # [1, 16]
    embedder = _tiny("eps").cond_stage_model
    ids = expected["ids_placeholder"]
    star = embedder.single_token_id("*")
    with torch.no_grad():
        emb = embedder.token_embedding(ids)
        emb[ids == star] = vector[0]
        for skip, layer in enumerate(("last", "penultimate")):
            assert rel_err(embedder.model(emb, skip_last=skip), expected[f"{layer}_placeholder"]) < 1e-5


def test_penultimate_skips_last_block_then_ln_final():
    embedder = _tiny("eps").cond_stage_model
    ids = embedder.tokenize(["a cat"])
    with torch.no_grad():
        x = embedder.token_embedding(ids) + embedder.model.positional_embedding
        x = embedder.model.transformer.resblocks[0](x)  # the tiny tower has 2 blocks
        assert torch.allclose(embedder.encode_ids(ids), embedder.model.ln_final(x), atol=1e-6)


def test_use_fp16_config_runs_float32_weights_on_cpu():
    """use_fp16: True (as in the released SD 2 configs) names the compute dtype but converts no weights: float32
    weights give the same output as use_fp16: False; after convert_to_fp16 the torso runs in float16."""
    from ldm.util import load_model_from_config

    config = OmegaConf.load(REPO / "configs" / "tests" / "tiny_sd2_eps.yaml")
    config.model.params.unet_config.params.use_fp16 = True
    model = load_model_from_config(config, require_fixture(WEIGHTS), strict=True).eval()
    unet = model.model.diffusion_model
    assert unet.dtype == torch.float16 and unet.torso_dtype == torch.float32
    inputs = golden("tiny_sd2_eps/inputs.safetensors")
    with torch.no_grad():
        out = model.apply_model(inputs["x_eps"], inputs["t_eps"].long(), inputs["c"])
        assert torch.equal(out, _tiny("eps").apply_model(inputs["x_eps"], inputs["t_eps"].long(), inputs["c"]))
    unet.convert_to_fp16()
    assert unet.torso_dtype == torch.float16
