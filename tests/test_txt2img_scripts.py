"""The two sampling scripts end to end on the goldens' tiny models, and the attention images."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture
from PIL import Image

from ldm.models.diffusion.guidance.visualize import render_attention


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--H", "64", "--W", "64", "--ddim_steps", "2", "--n_samples", "1", "--ae_max_refinement_steps", "1"]


def test_stable_txt2img_with_ae_and_attention_images(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    out = tmp_path / "sd"
    load_script("stable_txt2img").main([
        "--config", str(REPO / "configs/tests/golden_tiny_sd.yaml"), "--ckpt", str(GOLDEN_WEIGHTS["sd"]),
        "--prompt", "a cat and a frog", "--ae_tokens", "cat,5", "--f", "2", "--n_iter", "1", "--precision", "full",
        "--outdir", str(out), "--save_attention", "--plms", *TINY,
    ])  # fmt: skip
    assert (out / "samples" / "00000.png").is_file() and (out / "a-cat-and-a-frog-0000.png").is_file()
    sheet = Image.open(out / "attention" / "00000.png")
    assert sheet.size == (3 * 64, 64 + 20)
    settings = json.loads((out / "settings-0000.json").read_text())
    assert settings["prompts"]["a cat and a frog"]["excited"] == [[2], [5]]
    # 2 steps: 0 -> 0, 10 -> round(0.4) = 0 (the higher threshold wins), 20 -> round(0.8) = 1
    assert settings["attend_and_excite"]["thresholds"] == {"0": 0.5, "1": 0.8}
    assert settings["options"]["sampler"] == "plms"


def test_ldm_txt2img_with_ae(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    out = tmp_path / "ldm"
    load_script("txt2img").main([
        "--config", str(REPO / "configs/tests/golden_tiny_ldm.yaml"), "--ckpt_path", str(GOLDEN_WEIGHTS["ldm"]),
        "--prompt", "a cat and a frog", "--ae_tokens", "frog", "--outdir", str(out), "--seed", "3", *TINY,
    ])  # fmt: skip
    assert (out / "samples" / "0000.png").is_file() and (out / "a-cat-and-a-frog.png").is_file()
    with pytest.raises(ValueError, match="'dog'.*Token table"):
        load_script("txt2img").main([
            "--config", str(REPO / "configs/tests/golden_tiny_ldm.yaml"), "--ckpt_path", str(GOLDEN_WEIGHTS["ldm"]),
            "--prompt", "a cat and a frog", "--ae_tokens", "dog", "--outdir", str(out), *TINY,
        ])  # fmt: skip


@pytest.mark.parametrize("hot", [(1, 1), (6, 5)])
def test_attention_image_hot_region_follows_the_map(hot):
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    maps = torch.zeros(2, 8, 8)
    maps[0, hot[0], hot[1]] = 1.0  # token 0: hot at `hot`; token 1: hot in the opposite corner
    maps[1, 7 - hot[0], 7 - hot[1]] = 1.0
    sheet = np.asarray(render_attention(image, maps, ["cat", "frog"]), dtype=np.float32)
    for k, (r, c) in enumerate([hot, (7 - hot[0], 7 - hot[1])]):
        tile = sheet[:64, 64 * (k + 1) : 64 * (k + 2)]
        red = tile[..., 0] - tile[..., 2]  # jet: red where the map is high, blue where low
        y, x = np.unravel_index(red.argmax(), red.shape)
        assert abs(y // 8 - r) <= 1 and abs(x // 8 - c) <= 1
    assert sheet[64:].min() < 128  # the label band has text in it


# ---------------------------------------------------------------- the shared loader and sampling routine


def test_load_model_errors_and_strict_loading(tmp_path):
    from omegaconf import OmegaConf
    from safetensors.torch import load_file, save_file

    from ldm import inference
    from ldm.util import CheckpointError

    require_fixture(GOLDEN_WEIGHTS["ldm"])
    config = REPO / "configs/tests/golden_tiny_ldm.yaml"
    with pytest.raises(FileNotFoundError, match="--ckpt_path .*missing.ckpt: no such file"):
        inference.load_model(config, tmp_path / "missing.ckpt", ckpt_flag="--ckpt_path")
    with pytest.raises(FileNotFoundError, match="--config .*nope.yaml: no such file"):
        inference.load_model(tmp_path / "nope.yaml", GOLDEN_WEIGHTS["ldm"])
    with pytest.raises(FileNotFoundError, match="--embedding_path .*emb.pt: no such file"):
        inference.load_model(config, GOLDEN_WEIGHTS["ldm"], tmp_path / "emb.pt")
    plain = OmegaConf.load(config)
    del plain.model.params["personalization_config"]
    OmegaConf.save(plain, tmp_path / "plain.yaml")
    (tmp_path / "emb.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="--embedding_path given, but --config .*plain.yaml builds no embedding"):
        inference.load_model(tmp_path / "plain.yaml", GOLDEN_WEIGHTS["ldm"], tmp_path / "emb.pt")
    # strict: a key the model does not have is refused (released checkpoints' known extras are dropped by name)
    state = load_file(str(GOLDEN_WEIGHTS["ldm"]))
    save_file({**state, "model.diffusion_model.stray": torch.zeros(1)}, str(tmp_path / "stray.safetensors"))
    with pytest.raises(CheckpointError, match="stray"):
        inference.load_model(config, tmp_path / "stray.safetensors")
    save_file({**state, "model_ema.decay": torch.tensor(0.999)}, str(tmp_path / "extras.safetensors"))
    assert inference.load_model(config, tmp_path / "extras.safetensors").training is False


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_txt2img_and_evaluation_generation_agree(tmp_path, sampler):
    """stable_txt2img --from-file and the evaluation's generate_images go through one engine: same seed rule (one
    seed per image from (seed, prompt, index)), same images, also with an ancestral sampler's per-image step noise.
    Both sides sample in batches of 2: the engine promises images independent of how full a batch is, not of the
    batch size (CPU kernels may round differently for 1 and 2).
    """
    from ldm import inference
    from ldm.evaluation.generate import generate_images

    require_fixture(GOLDEN_WEIGHTS["sd"])
    config, out = REPO / "configs/tests/golden_tiny_sd.yaml", tmp_path / "sd"
    (tmp_path / "prompts.txt").write_text("a cat and a frog\n")
    load_script("stable_txt2img").main([
        "--config", str(config), "--ckpt", str(GOLDEN_WEIGHTS["sd"]), "--from-file", str(tmp_path / "prompts.txt"),
        "--H", "32", "--W", "32", "--f", "2", "--ddim_steps", "2", "--n_samples", "2", "--n_iter", "2", "--seed", "5",
        "--precision", "full", "--skip_grid", "--outdir", str(out), "--sampler", sampler,
    ])  # fmt: skip
    model = inference.load_model(config, GOLDEN_WEIGHTS["sd"])
    images = generate_images(model, "a cat and a frog", 2, 2, 7.5, 5, 2, (4, 16, 16), sampler=sampler).images
    saved = [np.asarray(Image.open(out / "plain" / "a-cat-and-a-frog" / f"{k:05}.png")) for k in range(2)]
    for k, image in enumerate(images):
        np.testing.assert_array_equal(saved[k], np.asarray(inference.to_pil(image)))
    assert np.abs(saved[0].astype(float) - saved[1]).mean() > 1.0  # two noises, two images
