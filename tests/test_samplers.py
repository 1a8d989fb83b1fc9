"""The samplers on the model's sigma schedule (Euler, Euler ancestral, DPM++ 2M with and without Karras sigmas, UniPC)
against diffusers' schedulers, and Attend-and-Excite in them against diffusers' A&E pipeline.

The goldens are in tests/fixtures/samplers/ (made by make_sampler_goldens.py there; its README lists the settings):
diffusers 0.42.1's StableDiffusionPipeline / StableDiffusionAttendAndExcitePipeline driving the tiny test models'
UNets (eps: tiny_sd; v: tiny_sd2_v) from the goldens' start noise, CFG 5, batch 2, one generator per sample.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REPO, _golden_model, rel_err, require_fixture

from ldm.guidance.attend_excite.config import AttendExciteConfig, scale_schedule, schedule_fractions, step_at
from ldm.models.diffusion.guidance.attend_and_excite import AttendAndExcite
from ldm.models.diffusion.samplers import SAMPLER_NAMES, SAMPLERS, make_sampler, steps_run
from ldm.models.diffusion.sigma_schedule import karras_sigmas, sigma_run
from ldm.modules.diffusionmodules.util import timestep_embedding

GOLDEN = FIXTURES / "samplers"
SIGMA_SAMPLERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc")
NOISE_SEEDS = (31, 32)  # the goldens' per-sample generators
INPUTS = {"tiny_sd": FIXTURES / "golden" / "tiny_sd" / "inputs.safetensors",
          "tiny_sd2_v": FIXTURES / "sd2" / "tiny_sd2_v" / "inputs.safetensors"}  # fmt: skip
AE_SETTINGS = dict(token_indices=(2, 5), max_iter_to_alter=5, thresholds={0: 0.05, 2: 0.5, 4: 0.8}, schedule_steps=None)


def load(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require_fixture(path)))


@lru_cache(maxsize=2)
def tiny(name: str):
    if name == "tiny_sd":
        require_fixture(FIXTURES / "golden" / "weights" / "tiny_sd.ckpt")
        return _golden_model("sd")
    from omegaconf import OmegaConf

    from ldm.util import load_model_from_config

    config = OmegaConf.load(REPO / "configs" / "tests" / "tiny_sd2_v.yaml")
    weights = require_fixture(FIXTURES / "sd2" / "weights" / "tiny_sd2.safetensors")
    return load_model_from_config(config, weights, strict=True).eval()


def generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in NOISE_SEEDS]


def run(model, name: str, steps: int, inputs: dict, guidance=None, batch: slice = slice(None), gens=None):
    sampler = make_sampler(model, name)
    x_T = inputs["x_T"][batch]
    with torch.no_grad():
        out, _ = sampler.sample(
            steps, x_T.shape[0], tuple(x_T.shape[1:]), conditioning=inputs["c"][batch], x_T=x_T, verbose=False,
            unconditional_guidance_scale=5.0, unconditional_conditioning=inputs["uc"][batch], latent_guidance=guidance,
            generator=generators()[batch] if gens is None else gens,
        )  # fmt: skip
    return out, sampler


# --- the schedules -------------------------------------------------------------------------------------------------
def test_schedules_match_diffusers():
    """Timesteps (exactly), sigmas and the start-noise scale of every sampler, spacing and step count (SD 1.5
    scheduler config with "linspace", "leading", "trailing")."""
    golden = load(GOLDEN / "schedules.safetensors")
    model = tiny("tiny_sd")
    keys = sorted(k for k in golden if k.endswith("/timesteps"))
    assert len(keys) == 5 * 3 * 6
    for key in keys:
        name, spacing, steps, _ = key.split("/")
        sampler = make_sampler(model, name)
        sampler.spacing = spacing
        sampler.timesteps_for(int(steps), "uniform", 0.0)
        ts = torch.tensor(sampler.run.timesteps, dtype=torch.float64)
        assert torch.equal(ts, golden[key].double()), key
        sigmas = golden[key.replace("timesteps", "sigmas")]
        assert (torch.tensor(sampler.run.sigmas) - sigmas).abs().max() <= 1e-6 * sigmas.max(), key
        # diffusers starts at x = init_noise_sigma * noise; our loop's latent is z = x / sqrt(1 + sigma_0^2)
        init = float(golden[key.replace("timesteps", "init_noise_sigma")])
        scale = init / math.sqrt(sampler.run.sigmas[0] ** 2 + 1) if sampler.start_in_sigma_space else init
        assert abs(float(sampler.start_latent(torch.ones(1))) - scale) < 1e-6, key


def test_karras_sigmas_are_eq5_and_euler_timesteps_fractional():
    """Karras et al. eq. 5 written out in float64, and the fractional timesteps Euler hands the model."""
    i = np.arange(10)
    expected = (14.6 ** (1 / 7) + i / 9 * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7
    assert np.allclose(karras_sigmas(0.03, 14.6, 10), expected, rtol=1e-12)
    run = sigma_run(tiny("tiny_sd").alphas_cumprod, 25)
    assert run.timesteps[1] == pytest.approx(999 - 999 / 24, abs=1e-3) and not float(run.timesteps[1]).is_integer()
    assert run.sigmas[-1] == 0 and all(a > b for a, b in zip(run.sigmas, run.sigmas[1:]))


def test_fractional_timestep_embedding():
    """The UNet's sinusoidal embedding at a float t is the formula's (float64, written out), and integer-valued
    float timesteps embed as the long ones do."""
    t = torch.tensor([957.375, 41.625])
    freqs = np.exp(-math.log(10000) * np.arange(16) / 16)
    args = t.double().numpy()[:, None] * freqs[None]
    expected = torch.from_numpy(np.concatenate([np.cos(args), np.sin(args)], axis=1))
    assert (timestep_embedding(t, 32).double() - expected).abs().max() < 1e-4  # float32 arguments up to ~1e3
    assert torch.equal(
        timestep_embedding(torch.tensor([500.0, 3.0]), 32), timestep_embedding(torch.tensor([500, 3]), 32)
    )


# --- the samplers against diffusers' schedulers ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("model_name", ["tiny_sd", "tiny_sd2_v"])
@pytest.mark.parametrize("name", SIGMA_SAMPLERS)
def test_sampler_matches_diffusers(name: str, model_name: str, steps: int):
    """Final latents within 2e-5 of diffusers' scheduler (eps and v, CFG, batch 2; the ancestral one draws its noise
    from the same per-sample generators); the model gets the same timesteps."""
    golden = load(GOLDEN / model_name / f"{name}_{steps}.safetensors")
    out, sampler = run(tiny(model_name), name, steps, load(INPUTS[model_name]))
    assert torch.equal(torch.tensor(sampler.run.timesteps, dtype=torch.float64), golden["timesteps"].double())
    err = rel_err(out, golden["samples"])
    print(f"\n{model_name} {name} {steps}: {err:.2e}")
    assert err < 2e-5


def test_goldens_tell_the_samplers_apart():
    """The tolerance is meaningful: the five schedulers' goldens differ from each other by far more than 2e-5."""
    for model_name in INPUTS:
        for steps in (10, 25):
            outs = [load(GOLDEN / model_name / f"{n}_{steps}.safetensors")["samples"] for n in SIGMA_SAMPLERS]
            assert min(rel_err(a, b) for a in outs for b in outs if a is not b) > 5e-4


def test_ancestral_noise_is_per_sample():
    """Euler ancestral with one generator per sample: a sample of a batch of 2 is the one it makes alone."""
    inputs = load(INPUTS["tiny_sd2_v"])
    model = tiny("tiny_sd2_v")
    both, _ = run(model, "euler_a", 6, inputs)
    second, _ = run(model, "euler_a", 6, inputs, batch=slice(1, 2))
    assert rel_err(second[0], both[1]) < 1e-5
    other, _ = run(model, "euler_a", 6, inputs, gens=[torch.Generator().manual_seed(s) for s in (7, 8)])
    assert rel_err(other, both) > 1e-2  # the step noise does matter


def test_eta_is_refused_and_steps_are_exact():
    model = tiny("tiny_sd")
    for name in SIGMA_SAMPLERS:
        with pytest.raises(ValueError, match="takes no eta"):
            make_sampler(model, name).timesteps_for(10, "uniform", 0.5)
        assert steps_run(name, 7, 1000) == 7
    assert steps_run("ddim", 7, 1000) == 8 and steps_run("ddpm", 7, 1000) == 7
    assert set(SIGMA_SAMPLERS) < set(SAMPLER_NAMES) and SAMPLERS["dpmpp_2m_karras"].a1111 == "DPM++ 2M Karras"
    with pytest.raises(ValueError, match="unknown sampler 'k_lms'; use one of ddim, plms"):
        make_sampler(model, "k_lms")


# --- Attend-and-Excite in every sampler ------------------------------------------------------------------------------
def ae_log() -> dict:
    return json.loads(require_fixture(GOLDEN / "ae" / "tiny_sd" / "log.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_2m_karras", "unipc"])
def test_ae_matches_diffusers_pipeline(name: str):
    """DPM-Solver++ and UniPC work on z_t itself, as diffusers' do: A&E (the hook on z_t before each step) equals
    diffusers' A&E pipeline with that scheduler: final latents, each step's losses and refinement iterations."""
    golden = load(GOLDEN / "ae" / "tiny_sd" / f"{name}.safetensors")
    model = tiny("tiny_sd")
    guidance = AttendAndExcite(model, AttendExciteConfig(**AE_SETTINGS))
    out, sampler = run(model, name, 10, load(INPUTS["tiny_sd"]), guidance=guidance)
    assert rel_err(out, golden["latents_final"]) < 5e-5
    records = {r["step"]: r for r in guidance.records}
    assert sorted(records) == list(range(5))
    for step in ae_log()[name][:5]:
        rec = records[step["i"]]
        assert rec["t"] == step["t"] == sampler.run.timesteps[step["i"]]
        for ref, ours in zip(step["samples"], rec["groups"], strict=True):
            assert abs(ref["loss"] - ours["loss"]) < 1e-4
            assert ("refinement" in ref) == ("refinement" in ours)
            if "refinement" in ref:
                assert ours["refinement"]["iterations"] == ref["refinement"]["iterations"]
                assert np.allclose([*ours["refinement"]["losses"], ours["refinement"]["loss_out"]],
                                   ref["refinement"]["losses"], atol=1e-4)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", ["euler", "euler_a"])
def test_ae_in_euler_differs_from_diffusers_pipeline_on_purpose(name: str):
    """diffusers' A&E pipeline runs the guidance pass and the update on the sigma-space latent x = z sqrt(1 +
    sigma^2) that its Euler schedulers keep, without ``scale_model_input``: at the first step the UNet sees a latent
    of std ~14.6 instead of ~1, and the update moves x by alpha grad_x instead of z by alpha grad_z. Ours guides z_t
    for every sampler (the update DDIM, DPM-Solver and UniPC get). The test shows both: ours differs from the
    pipeline's output, and the same A&E fed x (an adapter written here) reproduces the pipeline."""
    golden = load(GOLDEN / "ae" / "tiny_sd" / f"{name}.safetensors")
    model = tiny("tiny_sd")
    inputs = load(INPUTS["tiny_sd"])
    ours, _ = run(model, name, 10, inputs, guidance=AttendAndExcite(model, AttendExciteConfig(**AE_SETTINGS)))
    assert rel_err(ours, golden["latents_final"]) > 0.05

    guidance = AttendAndExcite(model, AttendExciteConfig(**AE_SETTINGS))
    sampler = make_sampler(model, name)

    def on_sigma_space_latent(z, t, step, num_steps, cond):
        scale = math.sqrt(sampler.run.sigmas[step] ** 2 + 1.0)
        return guidance(z * scale, t, step, num_steps, cond) / scale

    x_T = inputs["x_T"]
    with torch.no_grad():
        theirs, _ = sampler.sample(
            10, 2, tuple(x_T.shape[1:]), conditioning=inputs["c"], x_T=x_T, verbose=False, generator=generators(),
            unconditional_guidance_scale=5.0, unconditional_conditioning=inputs["uc"],
            latent_guidance=on_sigma_space_latent,
        )  # fmt: skip
    assert rel_err(theirs, golden["latents_final"]) < 5e-5
    iterations = [g.get("refinement", {}).get("iterations") for g in guidance.records[0]["groups"]]
    assert iterations == [s["refinement"]["iterations"] for s in ae_log()[name][0]["samples"]]


def test_ae_records_keep_fractional_timesteps():
    """Euler's 25-step run hands the hook float timesteps; the guidance records them as floats."""
    model = tiny("tiny_sd")
    inputs = load(INPUTS["tiny_sd"])
    cfg = AttendExciteConfig(token_indices=(2, 5), attention_res=8, max_iter_to_alter=2, thresholds={},
                             schedule_steps=None)  # fmt: skip
    guidance = AttendAndExcite(model, cfg)
    run(model, "euler", 25, inputs, guidance=guidance, batch=slice(0, 1))
    assert [r["t"] for r in guidance.records] == [999, pytest.approx(957.375)]


# --- A&E's schedule as fractions of the run --------------------------------------------------------------------------
def test_schedule_fractions_carry_the_official_schedule_over():
    """The official 50-step schedule is thresholds at 0, 1/5, 2/5 of the run and updates in its first half; at N
    steps a fraction f is step floor(f N + 1/2) (exact), so 20 steps get {0, 4, 8} and updates at steps < 10."""
    official = AttendExciteConfig()
    alter, thresholds = schedule_fractions(official)
    assert alter == Fraction(1, 2) and sorted(thresholds) == [0, Fraction(1, 5), Fraction(2, 5)]
    expected = {10: ({0: 0.05, 2: 0.5, 4: 0.8}, 5), 15: ({0: 0.05, 3: 0.5, 6: 0.8}, 8),
                20: ({0: 0.05, 4: 0.5, 8: 0.8}, 10), 25: ({0: 0.05, 5: 0.5, 10: 0.8}, 13),
                50: ({0: 0.05, 10: 0.5, 20: 0.8}, 25)}  # fmt: skip
    for steps, (thr, alter_steps) in expected.items():
        used = scale_schedule(official, steps)
        assert (used.thresholds, used.max_iter_to_alter, used.schedule_steps) == (thr, alter_steps, None)
    # today's integer schedules keep their meaning: round(i * N / B) half up, for any B
    for base, i, n in [(50, 25, 15), (7, 3, 10), (100, 35, 20), (33, 10, 1)]:
        assert step_at(schedule_fractions(AttendExciteConfig(max_iter_to_alter=i, schedule_steps=base))[0], n) == (
            math.floor(i * n / base + 0.5)
        )
