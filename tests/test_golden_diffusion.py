"""LatentDiffusion and the samplers against the original code's outputs on the goldens' tiny models."""

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler
from tests.conftest import GOLDEN_WEIGHTS, assert_sampler_matches, load_golden, rel_err, require_fixture

SAMPLER_RUNS = {
    "ddim_cfg": (DDIMSampler, 10, 5.0),
    "ddim_nocfg": (DDIMSampler, 10, 1.0),
    "plms_cfg": (PLMSSampler, 10, 5.0),
    "ddim_long": (DDIMSampler, 50, 5.0),
    "ddim_uneven": (DDIMSampler, 7, 5.0),
}


def test_golden_checkpoint_loads_strictly(golden_model, golden_name):
    # load_model_from_config(strict=True) raised nothing; the state dict has every key of the file.
    from ldm.util import load_state_dict_file

    sd = load_state_dict_file(require_fixture(GOLDEN_WEIGHTS[golden_name]))
    own = golden_model.state_dict()
    assert set(sd) == set(own)
    assert all(torch.equal(own[k], sd[k]) for k in sd)


def test_apply_model_matches_golden(golden_model, golden_name):
    inputs = load_golden(f"tiny_{golden_name}", "inputs.safetensors")
    golden = load_golden(f"tiny_{golden_name}", "eps.safetensors")["eps"]
    with torch.no_grad():
        eps = golden_model.apply_model(inputs["x_eps"], inputs["t_eps"].long(), inputs["c"])
    assert rel_err(eps, golden) < 1e-5


def test_first_stage_matches_golden(golden_model, golden_name):
    inputs = load_golden(f"tiny_{golden_name}", "inputs.safetensors")
    golden = load_golden(f"tiny_{golden_name}", "vae.safetensors")
    with torch.no_grad():
        decoded = golden_model.decode_first_stage(inputs["z_dec"])
        posterior = golden_model.encode_first_stage(inputs["img_enc"])
    assert rel_err(decoded, golden["decoded"]) < 1e-5
    assert rel_err(posterior.mean, golden["enc_mean"]) < 1e-5
    assert rel_err(posterior.logvar, golden["enc_logvar"]) < 1e-5


@pytest.mark.parametrize("run", list(SAMPLER_RUNS))
def test_sampler_matches_golden(golden_model, golden_name, run):
    sampler_cls, steps, scale = SAMPLER_RUNS[run]
    inputs = load_golden(f"tiny_{golden_name}", "inputs.safetensors")
    golden = load_golden(f"tiny_{golden_name}", f"{run}.safetensors")
    assert_sampler_matches(sampler_cls(golden_model), steps, scale, inputs, golden, shape=(4, 32, 32))


def test_learned_conditioning_matches_golden(golden_model, golden_name):
    import json

    from tests.conftest import GOLDEN

    settings = json.loads(require_fixture(GOLDEN / "settings.json").read_text())
    prompts = settings["set"]["models"][f"tiny_{golden_name}"]["text"]["prompts"]
    golden = load_golden(f"tiny_{golden_name}", "text.safetensors")
    model = golden_model
    with torch.no_grad():
        ids = model.cond_stage_model.tokenize(prompts)
        assert torch.equal(ids.cpu(), golden["prompt_ids"].long())
        # The golden conditioning runs through the EmbeddingManager of the config ("*" -> its parameter).
        cond = model.get_learned_conditioning(prompts)
        empty = model.get_learned_conditioning([""])
    assert rel_err(cond, golden["prompt_cond"]) < 1e-5
    assert rel_err(empty, golden["empty_cond"]) < 1e-5
