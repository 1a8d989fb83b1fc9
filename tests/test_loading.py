"""Checkpoint loading: bad files are refused with clear errors; nothing unsafe is unpickled."""

import os

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import CheckpointError, ConfigError, instantiate_from_config, load_model_from_config, load_state_dict_file
from tests.conftest import GOLDEN_WEIGHTS, REPO, require_fixture

CONFIG = REPO / "configs" / "tests" / "golden_tiny_sd.yaml"


@pytest.fixture(scope="module")
def tiny_state_dict():
    return load_state_dict_file(require_fixture(GOLDEN_WEIGHTS["sd"]))


def test_safetensors_and_ckpt_give_same_tensors(tmp_path, tiny_state_dict):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    again = load_state_dict_file(path)
    assert set(again) == set(tiny_state_dict)
    assert all(torch.equal(again[k], tiny_state_dict[k]) for k in again)


def test_wrong_shape_is_refused_with_key_named(tmp_path, tiny_state_dict):
    sd = dict(tiny_state_dict)
    key = "model.diffusion_model.out.2.weight"
    sd[key] = torch.zeros(3, *sd[key].shape[1:])
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="shape mismatches") as err:
        load_model_from_config(OmegaConf.load(CONFIG), path)
    assert key in str(err.value)


def test_missing_and_unexpected_keys_reported_together(tmp_path, tiny_state_dict):
    sd = dict(tiny_state_dict)
    sd.pop("model.diffusion_model.out.2.bias")
    sd["model.diffusion_model.surprise"] = torch.zeros(1)
    path = tmp_path / "bad.ckpt"
    torch.save(sd, path)  # top-level state dict is accepted too
    with pytest.raises(CheckpointError) as err:
        load_model_from_config(OmegaConf.load(CONFIG), path)
    text = str(err.value)
    assert "missing keys (1)" in text and "unexpected keys (1)" in text
    assert "out.2.bias" in text and "surprise" in text
    model = load_model_from_config(OmegaConf.load(CONFIG), path, strict=False)  # non-strict loads the rest
    assert torch.equal(
        model.state_dict()["model.diffusion_model.out.2.weight"], sd["model.diffusion_model.out.2.weight"]
    )


def test_released_extras_are_dropped_and_embedding_manager_not_missing(tmp_path, tiny_state_dict):
    sd = {k: v for k, v in tiny_state_dict.items() if not k.startswith("embedding_manager.")}
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(3, dtype=torch.int)
    sd["model_ema.diffusion_modelout2bias"] = torch.zeros(4)
    path = tmp_path / "released.ckpt"
    torch.save({"state_dict": sd, "global_step": 10}, path)
    model = load_model_from_config(OmegaConf.load(CONFIG), path, strict=True)
    assert torch.equal(model.state_dict()["model.diffusion_model.out.2.bias"], sd["model.diffusion_model.out.2.bias"])


def test_truncated_file_is_refused(tmp_path):
    data = require_fixture(GOLDEN_WEIGHTS["sd"]).read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict_file(path)
    st = tmp_path / "truncated.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict_file(st)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="Refused to load"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_missing_file_and_bad_target_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.ckpt")
    cfg = OmegaConf.create({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusionn", "params": {}}})
    with pytest.raises(ConfigError, match=r"LatentDiffusionn.*model"):
        instantiate_from_config(cfg.model)
