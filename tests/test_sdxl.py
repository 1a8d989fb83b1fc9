"""SDXL against Stability-AI/generative-models (sgm) run unmodified (tests/fixtures/sdxl/, made by
make_sdxl_goldens.py): the full-size state-dict manifest, and on a tiny random SDXL-shaped model the towers, the
pooled vector, the conditioner's context and vector (per-sample size/crop, negative prompt, zeroed uc), the UNet,
the autoencoder and a placeholder spliced into both towers. Batch 3, non-square latents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ldm.modules.embedding_manager import EmbeddingManager
from ldm.modules.encoders.sdxl import SizeConditioning
from ldm.util import instantiate_from_config, load_model_from_config

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "sdxl"
CONFIG = REPO / "configs" / "tests" / "tiny_sdxl.yaml"
WEIGHTS = FIX / "weights" / "tiny_sdxl.safetensors"
SETTINGS = json.loads((FIX / "settings.json").read_text())
FORWARD_TOL = 1e-5  # max|x - golden| / max|golden|


def close(ours: torch.Tensor, golden: torch.Tensor, tol: float = FORWARD_TOL) -> None:
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    err = (ours.float() - golden.float()).abs().max() / golden.float().abs().max().clamp_min(1e-12)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model_from_config(OmegaConf.load(CONFIG), str(WEIGHTS), strict=True).eval()


def fix(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "tiny_sdxl" / f"{name}.safetensors"))


def sizes() -> SizeConditioning:
    return SizeConditioning(
        [tuple(s) for s in SETTINGS["original_size"]],
        [tuple(s) for s in SETTINGS["crop_top_left"]],
        [tuple(s) for s in SETTINGS["target_size"]],
    )


def test_manifest_key_for_key():
    """sgm's DiffusionEngine from configs/inference/sd_xl_base.yaml against ours from sd_xl_base-inference.yaml."""
    manifest = json.loads((FIX / "sd_xl_base_state_dict.json").read_text())
    with torch.device("meta"):
        ours = instantiate_from_config(OmegaConf.load(REPO / "configs" / "sdxl" / "sd_xl_base-inference.yaml").model)
    theirs = {k: v for k, v in manifest["keys"].items() if k != "denoiser.sigmas"}  # sgm's schedule buffer
    mine = {k: list(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(theirs) - set(mine)) == [] and sorted(set(mine) - set(theirs)) == []
    assert {k: v for k, v in mine.items() if theirs[k] != v} == {}
    assert sum(p.numel() for p in ours.parameters()) == manifest["num_parameters_total"]


def test_tiny_weights_load_strictly(model):
    assert set(load_file(str(WEIGHTS))) - set(model.state_dict()) == {"denoiser.sigmas"}


def test_towers_and_pooled(model):
    golden = fix("towers")
    clip_l, clip_g = model.cond_stage_model.towers
    prompts = SETTINGS["prompts"]
    assert torch.equal(clip_l.tokenize(prompts).cpu(), golden["ids_l"])
    assert torch.equal(clip_g.tokenize(prompts).cpu(), golden["ids_g"])
    with torch.no_grad():
        close(clip_l.encode(prompts), golden["clip_l_hidden"])  # block 2 of 3, no final LayerNorm
        ids = clip_g.tokenize(prompts)
        hidden, pooled = clip_g.encode_with_pooled(ids, clip_g.token_embedding(ids))
    close(hidden, golden["clip_g_penultimate"])  # no ln_final
    close(pooled, golden["clip_g_pooled"])


def test_conditioner_crossattn_and_vector(model):
    golden = fix("conditioning")
    prompts, negative = SETTINGS["prompts"], SETTINGS["negative_prompts"]
    hw = tuple(SETTINGS["original_size"][0])
    with torch.no_grad():
        c = model.prompt_conditioning(prompts, hw, sizes())
        uc_neg = model.unconditional_conditioning(3, hw, sizes(), negative_prompts=negative)
        uc_zero = model.unconditional_conditioning(3, hw, sizes())
    close(c["c_crossattn"][0], golden["crossattn"])
    close(c["c_adm"][0], golden["vector"])
    close(uc_neg["c_crossattn"][0], golden["uc_neg_crossattn"])
    close(uc_neg["c_adm"][0], golden["uc_neg_vector"])
    assert torch.equal(uc_zero["c_crossattn"][0], golden["uc_zero_crossattn"])  # zeros
    close(uc_zero["c_adm"][0], golden["uc_zero_vector"])  # zero pooled part, the same size embeddings


def test_unet(model):
    inputs, golden = fix("inputs"), fix("unet")
    with torch.no_grad():
        c = model.prompt_conditioning(SETTINGS["prompts"], None, sizes())
        out = model.apply_model(inputs["x"], inputs["t"], c)
    close(out, golden["out"])


def test_autoencoder(model):
    inputs, golden = fix("inputs"), fix("vae")
    with torch.no_grad():
        close(model.decode_first_stage(inputs["z_dec"]), golden["decoded"])
        posterior = model.encode_first_stage(inputs["img_enc"])
    mean, logvar = golden["enc_moments"].chunk(2, dim=1)
    close(posterior.mean, mean)
    close(posterior.logvar, logvar.clamp(-30.0, 20.0))


def test_placeholder_in_both_towers(model):
    golden = fix("placeholder")
    manager = EmbeddingManager(model.cond_stage_model, ["*"])
    with torch.no_grad():
        manager.string_to_param_dict["*"].copy_(torch.cat([golden["vector_clip_l"], golden["vector_clip_g"]], dim=1))
    model.embedding_manager = manager
    try:
        with torch.no_grad():
            c = model.prompt_conditioning(SETTINGS["placeholder_prompts"], None, sizes())
    finally:
        model.embedding_manager = None
    close(c["c_crossattn"][0], golden["crossattn"])
    close(c["c_adm"][0], golden["vector"])


@pytest.mark.parametrize("sampler", ["ddim", "plms", "ddpm", "euler", "euler_a", "dpmpp_2m_karras", "unipc"])
def test_our_samplers_run_on_sdxl(model, sampler):
    """Every sampler (DDIM, PLMS, DDPM, Euler, DPM++ 2M, UniPC) with CFG on both the context and y (sgm has none of
    them in this form: no golden, a finite run whose first step matches the guided eps of the UNet golden's
    conditioning)."""
    from ldm.inference import make_sampler

    inputs = fix("inputs")
    with torch.no_grad():
        c = model.prompt_conditioning(SETTINGS["prompts"], None, sizes())
        uc = model.unconditional_conditioning(3, None, sizes())
        steps = 3 if sampler != "ddpm" else 4
        out, _ = make_sampler(model, sampler).sample(
            steps, 3, (4, 16, 24), conditioning=c, unconditional_conditioning=uc, unconditional_guidance_scale=5.0,
            x_T=inputs["x_T"], verbose=False, generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
    assert out.shape == (3, 4, 16, 24) and torch.isfinite(out).all()
