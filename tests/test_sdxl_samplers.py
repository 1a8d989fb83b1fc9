"""Our Euler and DPM++ 2M on SDXL against sgm's own samplers (tests/fixtures/sdxl/, made by make_sdxl_goldens.py
from Stability-AI/generative-models run unmodified): its EulerEDMSampler (no churn) and DPMPP2MSampler on
LegacyDDPMDiscretization with VanillaCFG, batch 3, non-square latents, per-sample size/crop, a negative prompt.

SDXL models use sgm's discretization ("sgm" spacing, ``ModelDescription.sigma_spacing``): the timesteps
floor((T - 1) - i T / N) with their training sigmas, and Euler's start latent sqrt(1 + sigma_max^2) x_T. diffusers'
spacings differ from it, as the last tests show: "trailing" rounds where sgm floors (the same steps only when N
divides T) and its Euler starts from sigma_max x_T; "leading" (diffusers' SDXL scheduler config, steps_offset 1)
runs other timesteps altogether.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ldm.models.description import describe_config
from ldm.models.diffusion.samplers import make_sampler
from ldm.models.diffusion.sigma_schedule import sigma_run
from ldm.modules.encoders.sdxl import SizeConditioning
from ldm.util import load_model_from_config

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "sdxl"
CONFIG = REPO / "configs" / "tests" / "tiny_sdxl.yaml"
SETTINGS = json.loads((FIX / "settings.json").read_text())
SAMPLE_TOL = 2e-5  # max|x - golden| / max|golden| for sampled latents
RUNS = {"euler": "euler_cfg", "dpmpp_2m": "dpmpp2m_cfg"}  # ours -> sgm's recorded run


@pytest.fixture(scope="module")
def model():
    return load_model_from_config(OmegaConf.load(CONFIG), str(FIX / "weights" / "tiny_sdxl.safetensors")).eval()


@pytest.fixture(scope="module")
def conditioning(model):
    sizes = SizeConditioning(*([tuple(v) for v in SETTINGS[k]] for k in ("original_size", "crop_top_left",
                                                                        "target_size")))  # fmt: skip
    with torch.no_grad():
        c = model.prompt_conditioning(SETTINGS["prompts"], None, sizes)
        uc = model.unconditional_conditioning(3, None, sizes, negative_prompts=SETTINGS["negative_prompts"])
    return c, uc


def rel(x: torch.Tensor, golden: torch.Tensor) -> float:
    return float((x - golden).abs().max() / golden.abs().max())


def run(model, conditioning, name: str, steps: int, spacing: str | None = None) -> torch.Tensor:
    """Sampler ``name`` as sgm's runs: CFG 5 with the negative-prompt uc, from the goldens' x_T [3, 4, 16, 24]."""
    c, uc = conditioning
    x_T = load_file(str(FIX / "tiny_sdxl" / "inputs.safetensors"))["x_T"]
    sampler = make_sampler(model, name)
    if spacing is not None:
        sampler.spacing = spacing
    with torch.no_grad():
        out, _ = sampler.sample(steps, 3, (4, 16, 24), conditioning=c, unconditional_conditioning=uc,
                                unconditional_guidance_scale=5.0, x_T=x_T, verbose=False)  # fmt: skip
    return out


def test_sdxl_models_use_sgm_s_discretization(model):
    assert make_sampler(model, "euler").spacing == "sgm" and make_sampler(model, "dpmpp_2m").spacing == "sgm"
    assert describe_config(REPO / "configs/sdxl/sd_xl_base-inference.yaml").sigma_spacing == "sgm"
    assert describe_config(REPO / "configs/stable-diffusion/v1-inference.yaml").sigma_spacing == "linspace"
    golden = load_file(str(FIX / "tiny_sdxl" / "discretization.safetensors"))
    for steps in SETTINGS["discretization"]["steps"]:
        ours = sigma_run(model.alphas_cumprod, steps, "sgm")
        assert ours.timesteps == golden[f"timesteps_{steps}"].double().tolist()  # what sgm's denoiser gives the UNet
        assert rel(torch.tensor(ours.sigmas), golden[f"sigmas_{steps}"]) < 1e-6  # its sampler's sigmas, final 0


@pytest.mark.parametrize("steps", [10, 30])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_euler_and_dpmpp_2m_match_sgm(model, conditioning, name, steps):
    file = "samples" if steps == 10 else "discretization"
    golden = load_file(str(FIX / "tiny_sdxl" / f"{file}.safetensors"))[f"{RUNS[name]}_{steps}"]
    assert rel(run(model, conditioning, name, steps), golden) < SAMPLE_TOL


def test_diffusers_spacings_are_not_sgm_s(model, conditioning):
    """The documented difference: diffusers' "trailing" is sgm's timesteps only when N divides T, and its Euler
    starts at sigma_max x_T; "leading" (diffusers' SDXL config) samples other timesteps."""
    golden = load_file(str(FIX / "tiny_sdxl" / "discretization.safetensors"))
    trailing = sigma_run(model.alphas_cumprod, 30, "trailing").timesteps
    sgm = golden["timesteps_30"].double().tolist()
    assert [i for i, (a, b) in enumerate(zip(trailing, sgm, strict=True)) if a != b] == [1, 4, 7, 20, 23, 26, 29]
    assert sigma_run(model.alphas_cumprod, 10, "trailing").timesteps == golden["timesteps_10"].double().tolist()
    assert sigma_run(model.alphas_cumprod, 10, "leading").timesteps[:2] == [901.0, 801.0]
    ten = load_file(str(FIX / "tiny_sdxl" / "samples.safetensors"))
    assert rel(run(model, conditioning, "dpmpp_2m", 10, "trailing"), ten["dpmpp2m_cfg_10"]) < SAMPLE_TOL  # same steps
    assert rel(run(model, conditioning, "dpmpp_2m", 30, "trailing"), golden["dpmpp2m_cfg_30"]) > 1e-4
    assert rel(run(model, conditioning, "euler", 10, "trailing"), ten["euler_cfg_10"]) > 1e-3  # the start latent
    assert rel(run(model, conditioning, "euler", 10, "leading"), ten["euler_cfg_10"]) > 0.1
