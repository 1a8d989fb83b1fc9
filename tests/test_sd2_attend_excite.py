"""Attend-and-Excite on Stable Diffusion 2.x: the OpenCLIP tokenizer in the token lookup, the SD 2 preset, and a
command-line run of scripts/stable_txt2img.py on the tiny SD 2 v-model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO, require_fixture
from PIL import Image

from ldm.ae_flags import DEFAULT_AE_CONFIG, SD2_AE_CONFIG, load_ae_config, preset_for_model
from ldm.models.diffusion.guidance.tokens import end_position, resolve_ae_tokens, token_table
from ldm.modules.encoders.openclip_tokenizer import OpenCLIPTokenizer

WEIGHTS = REPO / "tests" / "fixtures" / "sd2" / "weights" / "tiny_sd2.safetensors"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tokens_resolve_through_the_openclip_tokenizer():
    tok = OpenCLIPTokenizer()
    ids = tok.ids(["A Cat and a FROG next to crème brûlée!"])[0].tolist()
    # [start, a, cat, and, a, frog, next, to, crème (2 pieces), brûlée (4 pieces), !, end, 0 ...]
    assert ids[:6] == [49406, 320, 2368, 537, 320, 11438]
    last = end_position(ids, tok)
    assert ids[last] == 49407 and ids[last + 1 :] == [0] * (76 - last)
    assert resolve_ae_tokens("cat,frog", ids, tok) == ((2,), (5,))
    assert resolve_ae_tokens("Frog, 3", ids, tok) == ((5,), (3,))  # words are cleaned (lower-cased) like the prompt
    (brulee,) = resolve_ae_tokens("brûlée", ids, tok)
    assert len(brulee) > 1 and brulee == tuple(range(brulee[0], brulee[-1] + 1))  # one group of sub-tokens
    table = token_table(ids, tok)
    assert table[0] == (0, "<|startoftext|>") and table[-1] == (last, "<|endoftext|>") and table[2] == (2, "cat</w>")
    with pytest.raises(ValueError, match="not in the prompt"):
        resolve_ae_tokens("dog", ids, tok)


def test_sd2_preset_is_the_official_one_with_eot_normalisation():
    official, sd2 = load_ae_config(DEFAULT_AE_CONFIG), load_ae_config(SD2_AE_CONFIG)
    assert sd2.softmax_end == "eot" and official.softmax_end == "last"
    assert sd2.attention_res == 16
    assert {k: v for k, v in vars(sd2).items() if k != "softmax_end"} == {
        k: v for k, v in vars(official).items() if k != "softmax_end"
    }
    for config in ("v2-inference.yaml", "v2-inference-v.yaml", "v2-finetune.yaml"):
        assert preset_for_model(REPO / "configs" / "stable-diffusion" / config) == SD2_AE_CONFIG
    assert preset_for_model(REPO / "configs" / "stable-diffusion" / "v1-inference.yaml") == DEFAULT_AE_CONFIG


TINY = ["--H", "32", "--W", "32", "--f", "2", "--ddim_steps", "3", "--n_samples", "1", "--n_iter", "1"]


def test_stable_txt2img_runs_attend_and_excite_on_tiny_sd2(tmp_path):
    require_fixture(WEIGHTS)
    script = load_script("stable_txt2img")
    common = ["--config", str(REPO / "configs/tests/tiny_sd2_v.yaml"), "--ckpt", str(WEIGHTS), "--precision", "full",
              "--prompt", "a cat and a frog", "--seed", "4", "--ae_max_refinement_steps", "1", *TINY]  # fmt: skip
    ae_out, plain_out = tmp_path / "ae", tmp_path / "plain"
    script.main([*common, "--outdir", str(ae_out), "--ae_tokens", "cat,frog", "--save_attention"])
    script.main([*common, "--outdir", str(plain_out)])
    settings = json.loads((ae_out / "settings-0000.json").read_text())
    assert settings["attend_and_excite"]["softmax_end"] == "eot"  # the SD 2 preset, picked from --config
    assert settings["attend_and_excite"]["attention_res"] == 16
    assert settings["prompts"]["a cat and a frog"]["excited"] == [[2], [5]]
    assert (ae_out / "attention" / "00000.png").is_file()
    with_ae = np.asarray(Image.open(ae_out / "samples" / "00000.png"), dtype=np.float32)
    without = np.asarray(Image.open(plain_out / "samples" / "00000.png"), dtype=np.float32)
    assert with_ae.shape == (32, 32, 3)
    assert np.abs(with_ae - without).max() > 0  # the guidance changed the latent


def test_stable_txt2img_with_sd2_embeddings_and_ae_on_the_placeholder(tmp_path):
    """An SD 2 embeddings file (the tiny tower's width) goes in with --embedding_path; A&E excites the placeholder."""
    import torch
    from omegaconf import OmegaConf

    from ldm.modules import embedding_interop as ei

    require_fixture(WEIGHTS)
    config = OmegaConf.merge(
        OmegaConf.load(REPO / "configs/tests/tiny_sd2_eps.yaml"),
        OmegaConf.load(REPO / "configs/tests/tiny_sd2_personalization.yaml"),
    )
    OmegaConf.save(config, tmp_path / "tiny_sd2_with_tokens.yaml")
    vectors = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    ei.write_embeddings(ei.Embeddings({"*": vectors}, {"*": 265}), tmp_path / "emb.pt")
    out = tmp_path / "out"
    load_script("stable_txt2img").main([
        "--config", str(tmp_path / "tiny_sd2_with_tokens.yaml"), "--ckpt", str(WEIGHTS), "--precision", "full",
        "--embedding_path", str(tmp_path / "emb.pt"), "--prompt", "a * and a frog", "--ae_tokens", "*,frog",
        "--outdir", str(out), "--ae_max_refinement_steps", "1", *TINY,
    ])  # fmt: skip
    settings = json.loads((out / "settings-0000.json").read_text())
    # the 2-vector placeholder occupies positions 2-3 and shifts "frog" to 6
    assert settings["prompts"]["a * and a frog"]["excited"] == [[2, 3], [6]]
    assert (out / "samples" / "00000.png").is_file()
