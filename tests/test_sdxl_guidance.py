"""Attend-and-Excite (and every registered guidance method) on SDXL, on the tiny SDXL model
(tests/fixtures/sdxl/weights/tiny_sdxl.safetensors, sgm's layout):

- the SDXL preset (configs/guidance/attend_and_excite_sdxl.yaml) is chosen by the model's family;
- token positions: both towers see the placeholder's vectors and the prompt's words at the positions
  ``--ae_tokens`` resolves with the conditioner's (CLIP-L's) tokenizer;
- the guidance pass keeps the vector y: the update changes with y, and equals the update computed by hand from a
  UNet call with the context and y;
- A&E with the preset runs at batch 1 and 2 through scripts/stable_txt2img.py (with --save_attention) and the engine
  (--from-file), per-sample losses not depending on the batch.

The tiny model's cross-attention sits at ds 2 and ds 4 (SDXL's 64x64 and 32x32 at 1024 px); at 64 px its latent is
32x32, so the preset's depth (ds 4) is the 8x8 map: ``--ae_attention_res 8``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf
from PIL import Image
from test_txt2img_scripts import load_script

from ldm import guidance
from ldm.ae_flags import DEFAULT_AE_CONFIG, SDXL_AE_CONFIG, attend_excite_config, load_ae_config, preset_for_model
from ldm.guidance.attend_excite import AttendAndExcite, AttendExciteConfig
from ldm.guidance.attend_excite.maps import attend_excite_loss, max_attention_per_token
from ldm.guidance.tokens import prompt_tokens, resolve_ae_tokens
from ldm.models.description import describe_config
from ldm.modules.attention_control import AttentionStore, register_attention_controller
from ldm.modules.embedding_manager import EmbeddingManager
from ldm.modules.encoders.sdxl import SizeConditioning
from ldm.util import load_model_from_config

CONFIG = REPO / "configs" / "tests" / "tiny_sdxl.yaml"
WEIGHTS = REPO / "tests" / "fixtures" / "sdxl" / "weights" / "tiny_sdxl.safetensors"
TINY_RES = 8  # ds 4 at 64 px: the depth of the SDXL preset's 32x32 maps at 1024 px
FAST = ["--H", "64", "--W", "64", "--ddim_steps", "3", "--n_iter", "1", "--precision", "full", "--scale", "5",
        "--ae_attention_res", str(TINY_RES), "--ae_max_refinement_steps", "1", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model_from_config(OmegaConf.load(CONFIG), str(WEIGHTS), strict=True).eval()


def test_the_sdxl_preset_is_chosen_by_the_family():
    for config in (REPO / "configs/sdxl/sd_xl_base-inference.yaml", CONFIG):
        assert describe_config(config).family == "sdxl"
        assert preset_for_model(config) == SDXL_AE_CONFIG
        args = argparse.Namespace(config=str(config), ae_tokens="cat")
        assert attend_excite_config(args).attention_res == 32
    assert guidance.get_method("ae").preset_for("sdxl") == SDXL_AE_CONFIG
    official, sdxl = load_ae_config(DEFAULT_AE_CONFIG), load_ae_config(SDXL_AE_CONFIG)
    assert {k: v for k, v in vars(sdxl).items() if k != "attention_res"} == {
        k: v for k, v in vars(official).items() if k != "attention_res"
    }  # the official thresholds and schedule, at the 32x32 maps
    sides = describe_config(REPO / "configs/sdxl/sd_xl_base-inference.yaml").attention_sides(1024, 1024)
    assert sides == [(64, 64), (32, 32)]  # (h, w) per attention level: no 16x16 map at 1024 px


def test_token_positions_are_those_of_both_towers(model):
    """A 2-vector placeholder and a word: the positions --ae_tokens resolves are where each tower gets them."""
    conditioner = model.cond_stage_model
    manager = EmbeddingManager(conditioner, ["*"], num_vectors_per_token=2)
    holder = SimpleNamespace(cond_stage_model=conditioner, embedding_manager=manager)
    prompt = "a * and a frog"
    tokens = prompt_tokens(holder, prompt)
    groups = resolve_ae_tokens("*,frog", tokens.ids, conditioner.tokenizer, tokens.placeholders)
    assert groups == ((2, 3), (6,)) and tokens.eot == 7
    frog = conditioner.single_token_id("frog")
    vectors = manager.string_to_param_dict["*"].detach()  # [2, 16 + 24]
    d_l = conditioner.tower_widths[0]
    for k, tower in enumerate(conditioner.towers):
        ids = tower.tokenize([prompt])  # CLIP-L pads with the end token, bigG with 0
        spliced_ids, emb = manager(ids, conditioner.token_embedding(ids))
        part = vectors[:, :d_l] if k == 0 else vectors[:, d_l:]
        own = emb[0, :, :d_l] if k == 0 else emb[0, :, d_l:]
        assert spliced_ids[0, :8].tolist() == list(tokens.ids[:8])  # the same ids up to the end token
        assert int(spliced_ids[0, 6]) == frog and int(spliced_ids[0, 7]) == 49407
        assert torch.equal(own[[2, 3]], part)
    assert conditioner.towers[1].tokenize([prompt])[0, 8:].eq(0).all()


def test_the_guidance_pass_keeps_y(model):
    """SDXL's conditioning dict: the update depends on y, and equals the one computed by hand calling the UNet with
    the context and y (per sample, A&E eq. 4 with alpha_0 = scale_factor at step 0)."""
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 4, 32, 32, generator=g), torch.tensor([700, 700])
    prompts = ["a cat and a frog", "a frog and a cat"]
    sizes = SizeConditioning([(64, 64), (1024, 768)], [(0, 0), (32, 16)], [(64, 64), (512, 512)])
    with torch.no_grad():
        cond = model.prompt_conditioning(prompts, (64, 64), sizes)
        other_y = model.prompt_conditioning(prompts, (64, 64), SizeConditioning((256, 256), (0, 0), (64, 64)))
    assert torch.equal(cond["c_crossattn"][0], other_y["c_crossattn"][0])
    assert not torch.equal(cond["c_adm"][0], other_y["c_adm"][0])
    groups = [((2,), (5,)), ((5,), (2,))]
    cfg = AttendExciteConfig(attention_res=TINY_RES, max_iter_to_alter=1, thresholds={}, schedule_steps=None)

    def guided(c):
        with torch.no_grad():
            return AttendAndExcite(model, cfg, token_indices=groups)(x, t, 0, 10, c)

    ours = guided(cond)
    assert not torch.equal(ours, x)
    assert (ours - guided({"c_crossattn": cond["c_crossattn"], "c_adm": other_y["c_adm"]})).abs().max() > 1e-6
    unet = model.model.diffusion_model
    context, y = cond["c_crossattn"][0], cond["c_adm"][0]
    expected = []
    for b in range(2):
        leaf = x[b : b + 1].clone().requires_grad_(True)
        store = AttentionStore([TINY_RES])
        with torch.enable_grad(), register_attention_controller(unet, store):
            unet(leaf, t[:1], context=context[b : b + 1], y=y[b : b + 1])
            maps = store.aggregate(1, TINY_RES)[0]  # [8, 8, 77]
            loss = attend_excite_loss(max_attention_per_token(maps, groups[b], cfg))
            grad = torch.autograd.grad(loss, leaf)[0]
        expected.append(leaf.detach() - cfg.scale_factor * grad)
    assert torch.allclose(ours, torch.cat(expected), atol=1e-5, rtol=1e-5)


def _image(path: Path):
    import numpy as np

    return np.asarray(Image.open(path), dtype=np.float32)


def test_stable_txt2img_runs_the_sdxl_preset_at_batch_1_and_2(tmp_path):
    script = load_script("stable_txt2img")
    common = ["--config", str(CONFIG), "--ckpt", str(WEIGHTS), "--prompt", "a cat and a frog", *FAST]
    runs = {}
    runs_flags = {"ae1": ["--n_samples", "1", "--ae_tokens", "cat,frog"], "plain1": ["--n_samples", "1"],
                  "ae2": ["--n_samples", "2", "--ae_tokens", "cat,frog", "--save_attention"]}  # fmt: skip
    for name, extra in runs_flags.items():
        script.main([*common, *extra, "--outdir", str(tmp_path / name)])
        runs[name] = json.loads((tmp_path / name / "settings-0000.json").read_text())
    used = runs["ae2"]["attend_and_excite"]
    preset = load_ae_config(SDXL_AE_CONFIG)
    assert used["attention_res"] == TINY_RES and used["max_refinement_steps"] == 1  # the flags on top of the preset
    assert used["softmax_end"] == preset.softmax_end and used["scale_factor"] == preset.scale_factor
    assert used["thresholds"] == {"0": 0.05, "1": 0.8} and used["steps_run"] == 3  # the preset's, over 3 steps
    assert runs["ae1"]["prompts"]["a cat and a frog"]["excited"] == [[2], [5]]
    assert sorted(p.name for p in (tmp_path / "ae2" / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert sorted(p.name for p in (tmp_path / "ae2" / "attention").iterdir()) == ["00000.png", "00001.png"]
    with_ae, plain = _image(tmp_path / "ae1" / "samples" / "00000.png"), _image(tmp_path / "plain1" / "samples" /
                                                                                 "00000.png")  # fmt: skip
    assert with_ae.shape == (64, 64, 3) and abs(with_ae - plain).max() > 0  # the guidance moved the latent


def test_the_engine_runs_the_sdxl_preset_at_batch_1_and_2(tmp_path):
    """--from-file: two prompts whose words sit at different positions, in one batch of 2 and in batches of 1. Each
    image's noise comes from its own seed, so the first guided pass sees the same latent in both: same losses."""
    script = load_script("stable_txt2img")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat and a frog\na frog next to a cat\n")
    records = {}
    for batch in (1, 2):
        out = tmp_path / f"batch{batch}"
        script.main(["--config", str(CONFIG), "--ckpt", str(WEIGHTS), "--from-file", str(prompts), "--outdir",
                     str(out), "--n_samples", str(batch), "--ae_tokens", "cat,frog", *FAST])  # fmt: skip
        settings = json.loads((out / "settings-0000.json").read_text())
        assert settings["attend_and_excite"]["attention_res"] == TINY_RES
        records[batch] = {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("ae/*/records/*.json")}
    assert sorted(records[2]) == ["a-cat-and-a-frog", "a-frog-next-to-a-cat"]
    assert records[2]["a-cat-and-a-frog"]["excited"] == [[2], [5]]
    assert records[2]["a-frog-next-to-a-cat"]["excited"] == [[6], [2]]
    for stem, rec in records[2].items():
        first = rec["guidance"][0]
        assert first["step"] == 0 and first["groups"][0]["loss"] > 0
        alone = records[1][stem]["guidance"][0]["groups"][0]["loss"]
        assert first["groups"][0]["loss"] == pytest.approx(alone, rel=1e-4)  # per-sample, whatever the batch


def test_the_explorer_runs_the_sdxl_preset():
    from ldm.explorer.session import Explorer, Settings

    explorer = Explorer.load(CONFIG, WEIGHTS, SDXL_AE_CONFIG, device="cpu")
    assert explorer.default_preset == "--ae_config" and explorer.default_settings().scale == 5.0
    config, flags = explorer.ae_config("--ae_config", {"attention_res": str(TINY_RES), "max_refinement_steps": "1"})
    result = explorer.run("a cat and a frog", "cat,frog", Settings(steps=3, scale=5.0, seed=7, H=64, W=64), config,
                          ae_flags=flags, preset="--ae_config")  # fmt: skip
    assert result.excited.guided[0] and not any(result.plain.guided)
    assert all(m.shape == (2, TINY_RES, TINY_RES) for m in result.excited.maps)
    assert result.excited.final_maps.shape == (2, TINY_RES, TINY_RES)
    assert "--ae_config configs/guidance/attend_and_excite_sdxl.yaml" in result.command


@pytest.mark.parametrize("name", [n for n in guidance.method_names() if n != "plain"])
def test_every_registered_method_runs_on_sdxl_at_batch_2(model, name):
    """Each registered method (A&E, SynGen, Divide & Bind, CONFORM, INITNO, ...) with its SDXL preset (or its
    defaults), its maps at the tiny model's side, on two prompts with SDXL's conditioning dict (context and y): it runs
    and moves the latent."""
    from ldm.guidance.flags import guidance_from_args
    from ldm.inference import make_sampler, sample_prompts, schedule_for_run

    method = guidance.get_method(name)
    args = argparse.Namespace(guidance=name, ae_tokens="cat,frog", config=str(CONFIG))
    config = guidance_from_args(args, "sdxl").config  # the method's SDXL preset, else its default one
    quick = {"attention_res": TINY_RES, "max_refinement_steps": 1}  # the schedules as written (of 50 steps)
    config = dataclasses.replace(config, **{k: v for k, v in quick.items() if k in method.field_names()})
    used, _ = schedule_for_run(config, "ddim", 3, model.num_timesteps, log=False, method=method)
    prompts = ["a red cat and a blue frog", "a blue frog next to a red cat"]  # SynGen binds the modifiers
    kwargs = dict(latent_shape=(4, 32, 32), steps=3, scale=5.0, generator=torch.Generator().manual_seed(1))
    plain = sample_prompts(model, make_sampler(model, "ddim"), prompts, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(1)
    out = sample_prompts(model, make_sampler(model, "ddim"), prompts, ae_tokens="cat,frog", guidance=method,
                         guidance_config=used, **kwargs)  # fmt: skip
    assert out.guidance is not None
    assert out.latents.shape == (2, 4, 32, 32) and torch.isfinite(out.latents).all()
    assert not torch.equal(out.latents, plain.latents)


def test_a_diffusers_made_embedding_with_ae_on_its_placeholder(tmp_path):
    """The SDXL pivotal-tuning file diffusers users save (tests/fixtures/sdxl/interop/) through --embedding_path, and
    A&E on its placeholder: its two vectors sit at positions 4-5 and are one excited group."""
    config = OmegaConf.merge(OmegaConf.load(CONFIG),
                             OmegaConf.load(REPO / "configs/tests/tiny_sdxl_personalization.yaml"))  # fmt: skip
    OmegaConf.save(config, tmp_path / "tiny_sdxl_with_tokens.yaml")
    out = tmp_path / "out"
    load_script("stable_txt2img").main([
        "--config", str(tmp_path / "tiny_sdxl_with_tokens.yaml"), "--ckpt", str(WEIGHTS), "--n_samples", "1",
        "--embedding_path", str(REPO / "tests/fixtures/sdxl/interop/diffusers_made/pivotal_emb.safetensors"),
        "--prompt", "a photo of * on a beach", "--ae_tokens", "*,beach", "--outdir", str(out), *FAST,
    ])  # fmt: skip
    settings = json.loads((out / "settings-0000.json").read_text())
    assert settings["prompts"]["a photo of * on a beach"]["excited"] == [[4, 5], [8]]
    assert (out / "samples" / "00000.png").is_file()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--ae_tokens", "cat", "--ae_attention_res", "32"],
         "error: --ae_attention_res 32: at --H 64 --W 64 this model's cross-attention maps are 16x16, 8x8"),
        (["--embedding_path", str(REPO / "tests/fixtures/sdxl/interop/diffusers_made/pivotal_emb.safetensors")],
         "builds no embedding manager; use a config with personalization_config (e.g. "
         "configs/sdxl/sd_xl_base-inference_with_tokens.yaml)"),
    ],
)  # fmt: skip
def test_sdxl_errors_are_one_line(tmp_path, capsys, extra, message):
    """The preset's 32x32 maps at a size without them, and --embedding_path with the config without a manager."""
    from ldm.cli import run_cli

    script = load_script("stable_txt2img")
    argv = ["--config", str(CONFIG), "--ckpt", str(WEIGHTS), "--H", "64", "--W", "64", "--outdir", str(tmp_path),
            "--precision", "full", *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_cli(script.main, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
