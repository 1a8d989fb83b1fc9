"""Released checkpoints load strictly and sample (skipped unless the files are present; nothing is downloaded).

Point the tests at your copies with LDM_TEXT2IMG_CKPT / SD_V1_CKPT / SD_V2_CKPT (v2-1_512-ema-pruned or
512-base-ema) / SD_V2_V_CKPT (v2-1_768-ema-pruned or 768-v-ema) / SDXL_CKPT
(sd_xl_base_1.0.safetensors), or put them at the default paths below (a
`.safetensors` file with the same stem is found too).
"""

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.util import load_model_from_config
from tests.conftest import REPO

CASES = {
    "ldm": (
        "LDM_TEXT2IMG_CKPT",
        "models/ldm/text2img-large/model.ckpt",
        "configs/latent-diffusion/txt2img-1p4B-eval.yaml",
    ),
    "sd": ("SD_V1_CKPT", "models/ldm/stable-diffusion-v1/model.ckpt", "configs/stable-diffusion/v1-inference.yaml"),
    "sd2": (
        "SD_V2_CKPT",
        "models/ldm/stable-diffusion-v2/v2-1_512-ema-pruned.ckpt",
        "configs/stable-diffusion/v2-inference.yaml",
    ),
    "sd2_v": (
        "SD_V2_V_CKPT",
        "models/ldm/stable-diffusion-v2/v2-1_768-ema-pruned.ckpt",
        "configs/stable-diffusion/v2-inference-v.yaml",
    ),
    "sdxl": ("SDXL_CKPT", "models/sdxl/sd_xl_base_1.0.safetensors", "configs/sdxl/sd_xl_base-inference.yaml"),
}


def checkpoint_path(env: str, default: str) -> Path:
    if env in os.environ:
        return Path(os.environ[env])
    path = REPO / default
    return path if path.is_file() else path.with_suffix(".safetensors")


@pytest.mark.real_weights
@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_released_checkpoint_loads_and_samples(family):
    env, default, config = CASES[family]
    ckpt = checkpoint_path(env, default)
    if not ckpt.is_file():
        pytest.skip(f"needs the released {family} checkpoint {REPO / default} (or .safetensors; or set {env})")
    model = load_model_from_config(OmegaConf.load(REPO / config), ckpt, strict=True).eval()
    with torch.no_grad():
        c = model.get_learned_conditioning(["a photo of a cat"])
        uc = model.get_learned_conditioning([""])
        samples, _ = DDIMSampler(model).sample(
            2, 1, (4, 8, 8), conditioning=c, unconditional_conditioning=uc, unconditional_guidance_scale=5.0,
            verbose=False, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()
