"""The full-size released architectures, built on the meta device, have exactly the manifests' keys and shapes."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config
from tests.conftest import FIXTURES, REPO, require_fixture

CASES = {
    "sd_v1_state_dict.json": [
        "configs/stable-diffusion/v1-inference.yaml",
        "configs/stable-diffusion/v1-finetune.yaml",
    ],
    "ldm_txt2img_1p4B_state_dict.json": ["configs/latent-diffusion/txt2img-1p4B-finetune.yaml"],
    # SD 2.x: the reference's own manifests (tests/fixtures/sd2/README.md)
    "sd2/sd_v2_state_dict.json": ["configs/stable-diffusion/v2-inference.yaml"],
    "sd2/sd_v2_v_state_dict.json": ["configs/stable-diffusion/v2-inference-v.yaml"],
}


@pytest.mark.parametrize(
    "manifest,config", [(m, c) for m, configs in CASES.items() for c in configs], ids=lambda v: str(v).split("/")[-1]
)
def test_meta_model_matches_manifest(manifest, config):
    expected = json.loads(require_fixture(FIXTURES / manifest).read_text())["keys"]
    cfg = OmegaConf.load(REPO / config)
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


@pytest.mark.parametrize(
    "config,manifest",
    [
        ("v2-finetune.yaml", "sd_v2_state_dict.json"),
        ("v2-inference_with_tokens.yaml", "sd_v2_state_dict.json"),
        ("v2-inference-v_with_tokens.yaml", "sd_v2_v_state_dict.json"),
    ],
)
def test_sd2_configs_with_tokens_are_the_reference_model_plus_1024_wide_embeddings(config, manifest):
    """The SD 2 configs with an embedding manager = the reference model + the textual-inversion parameters (not in
    the reference manifests, which have no embedding manager): one 1024-wide vector for '*' and its initializer copy."""
    expected = json.loads(require_fixture(FIXTURES / "sd2" / manifest).read_text())["keys"]
    cfg = OmegaConf.load(REPO / "configs/stable-diffusion" / config)
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    manager = {k: got.pop(k) for k in [k for k in got if k.startswith("embedding_manager.")]}
    assert got == expected
    assert manager == {
        "embedding_manager.string_to_param_dict.*": [1, 1024],
        "embedding_manager.initial_embeddings.*": [1, 1024],
    }


@pytest.mark.parametrize(
    "config",
    sorted(
        str(p.relative_to(REPO))
        for d in ("latent-diffusion", "stable-diffusion")
        for p in (REPO / "configs" / d).glob("*.yaml")
    ),
)
def test_every_released_config_builds(config):
    """Every shipped config of the released families builds (on the meta device) with the UNet of its family."""
    cfg = OmegaConf.load(REPO / config)
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    context_dim = 1280 if "latent-diffusion" in config else 1024 if "/v2-" in config else 768
    assert model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features == context_dim
    assert (model.embedding_manager is None) == ("personalization_config" not in cfg.model.params)
