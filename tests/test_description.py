"""The model description (ldm/models/description.py): families, towers, widths, map sides and defaults, from a config
and from a loaded model, for every shipped config family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.models.description import describe, describe_config, describe_model, families_for_vectors
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize(
    "config, family, towers, context, vector",
    [
        ("latent-diffusion/txt2img-1p4B-eval.yaml", "ldm", [("bert", 1280, 32, "last", False)], 1280, None),
        ("stable-diffusion/v1-inference.yaml", "sd1", [("clip", 768, 12, "last", False)], 768, None),
        ("stable-diffusion/v2-inference-v.yaml", "sd2", [("openclip", 1024, 24, "penultimate", False)], 1024, None),
        (
            "sdxl/sd_xl_base-inference.yaml",
            "sdxl",
            [("clip", 768, 12, "hidden:11", False), ("openclip", 1280, 32, "penultimate", True)],
            2048,
            2816,
        ),
        ("toyworld/txt2img-inference.yaml", "ldm", [("bert", 128, 2, "last", False)], 128, None),
        ("toyworld2/txt2img-inference.yaml", "sd1", [("clip", 128, 3, "last", False)], 128, None),
    ],
)
def test_released_configs(config, family, towers, context, vector):
    d = describe(CONFIGS / config)
    assert d.family == family
    assert [(t.kind, t.width, t.layers, t.layer, t.pooled) for t in d.towers] == towers
    assert (d.context_dim, d.vector_dim) == (context, vector)


def test_sdxl_geometry_and_maps():
    d = describe_config(CONFIGS / "sdxl" / "sd_xl_base-inference.yaml")
    assert (d.first_stage_factor, d.channels, d.unet_levels, d.image_size) == (8, 4, 3, 128)
    assert d.attention_ds == (2, 4)  # attention only at the two inner levels (depth 0 at the outer one)
    assert d.attention_sides(1024, 1024) == [(64, 64), (32, 32)]
    assert d.attention_sides(768, 1344) == [(48, 84), (24, 42)]  # non-square
    assert d.parameterization == "eps" and d.native_image_size == 1024
    assert d.embedding_widths == {"clip_l": 768, "clip_g": 1280}
    assert not d.towers[1].final_norm  # bigG's penultimate layer without ln_final
    assert d.defaults.scale == 5.0 and d.defaults.image_side == 1024


def test_sd_maps_match_the_old_geometry():
    d = describe_config(CONFIGS / "stable-diffusion" / "v1-inference.yaml")
    assert d.attention_ds == (1, 2, 4, 8) and d.attention_sides(512, 512)[2] == (16, 16)
    assert d.downsampling == 64


def test_toys_and_their_defaults():
    toy1 = describe(CONFIGS / "toyworld" / "txt2img-inference.yaml")
    toy2 = describe(CONFIGS / "toyworld2" / "txt2img-inference.yaml")
    sd1 = describe(CONFIGS / "stable-diffusion" / "v1-inference.yaml")
    assert (toy1.toy, toy2.toy, sd1.toy) == ("toyworld1", "toyworld2", None)
    assert (toy2.defaults.steps, toy2.defaults.scale, toy2.defaults.image_side) == (25, 3.0, 64)
    assert (sd1.defaults.steps, sd1.defaults.scale, sd1.defaults.image_side) == (50, 7.5, 512)
    assert toy1.defaults.ae_preset == "toyworld/attend_and_excite.yaml"
    assert toy2.defaults.ae_preset == "guidance/attend_and_excite.yaml"


def test_width_1280_is_not_a_family():
    """1280 is BERT's width and SDXL bigG's: a single 1280 vector is LDM's, a clip_l/clip_g pair is SDXL's."""
    assert families_for_vectors({"": 1280}) == ["ldm"]
    assert families_for_vectors({"clip_l": 768, "clip_g": 1280}) == ["sdxl"]
    assert families_for_vectors({"": 32}) == []


TINY = ["tests/tiny_sd2_v.yaml", "tests/golden_tiny_sd.yaml", "tests/golden_tiny_ldm.yaml", "tests/tiny_sdxl.yaml"]


@pytest.mark.parametrize("config", TINY)
def test_model_and_config_agree(config):
    """The description of a built model (no config at hand) equals that of its config."""
    cfg = OmegaConf.load(CONFIGS / config)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg.model)
    from_model, from_config = describe_model(model), describe_config(cfg)
    assert from_model == from_config
    assert from_model.family in ("sd1", "sd2", "ldm", "sdxl")
