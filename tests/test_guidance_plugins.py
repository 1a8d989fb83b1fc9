"""The guidance seam: a method is one folder plus one registry line; flags and YAML come from its config; the guidance
pass goes through the model's own denoising call (SDXL-shaped conditioning keeps its vector y)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, _golden_model, require_fixture
from test_txt2img_scripts import load_script

from ldm import guidance
from ldm.errors import UserError
from ldm.guidance.attend_excite import AttendAndExcite, AttendExciteConfig
from ldm.guidance.flags import add_guidance_args, field_parser, guidance_from_args, load_guidance_yaml
from ldm.modules.attention_control import AttentionStore, register_attention_controller

TOY_METHOD = '''
"""A toy method: pull up the maximum of the first excited word's map (one folder, one registry line)."""
from dataclasses import dataclass

from ldm.guidance.attend_excite.maps import max_attention_per_token
from ldm.guidance.attend_excite.config import display_config
from ldm.guidance.base import GuidanceMethod
from ldm.guidance.engine import AttentionLossGuidance, GroupLoss


@dataclass(frozen=True)
class WordMaxConfig:
    attention_res: int = 16
    word_step: float = 50.0
    max_iter_to_alter: int = 2


class WordMax(AttentionLossGuidance):
    def group_loss(self, maps, group, step):
        shown = display_config(self.config)
        score = max_attention_per_token(maps.cross[self.config.attention_res], group.token_groups[:1], shown)
        return GroupLoss(1.0 - score[0], score)

    def step_size(self, step, num_steps):
        return self.config.word_step


def build(request):
    from ldm.guidance.engine import SampleTarget

    targets = [SampleTarget(g, t.eot) for g, t in zip(request.token_groups, request.tokens)]
    return WordMax(request.model, request.config, targets, on_maps=request.on_maps)


METHOD = GuidanceMethod(name="word_max", title="Word max", paper="a test", config_class=WordMaxConfig, build=build,
                        needs_tokens=True)
'''
SD = ["--config", str(REPO / "configs/tests/golden_tiny_sd.yaml"), "--ckpt", str(GOLDEN_WEIGHTS["sd"])]
SMALL = ["--H", "64", "--W", "64", "--f", "2", "--ddim_steps", "3", "--precision", "full", "--scale", "3"]


def test_a_registered_method_runs_through_txt2img_the_engine_and_the_explorer(word_max, tmp_path):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    script = load_script("stable_txt2img")
    run = ["--prompt", "a cat and a frog", "--ae_tokens", "frog", "--n_samples", "1", "--n_iter", "1", *SMALL]
    script.main([*SD, *run, "--outdir", str(tmp_path / "plain"), "--ae_tokens", ""])
    script.main([*SD, *run, "--guidance", "word_max", "--g_word_step", "80", "--outdir", str(tmp_path / "toy")])
    settings = json.loads((tmp_path / "toy" / "settings-0000.json").read_text())
    assert settings["guidance"] == {
        "method": "word_max",
        "settings": {"attention_res": 16, "word_step": 80.0, "max_iter_to_alter": 2},
        "steps_run": 3,
    }
    plain, toy = (Path(tmp_path / d / "samples" / "00000.png").read_bytes() for d in ("plain", "toy"))
    assert plain != toy  # the method moved the latent

    # the engine: items of the method, its records beside the images
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat and a frog\n")
    script.main([*SD, *SMALL, "--from-file", str(prompts), "--ae_tokens", "frog", "--guidance", "word_max",
                 "--n_samples", "1", "--n_iter", "1", "--skip_grid", "--outdir", str(tmp_path / "engine")])  # fmt: skip
    record = json.loads((tmp_path / "engine/word_max/a-cat-and-a-frog/records/00000.json").read_text())
    assert [r["step"] for r in record["guidance"]] == [0, 1]  # max_iter_to_alter 2
    assert all(0.0 <= g["loss"] <= 1.0 and "update_loss" in g for r in record["guidance"] for g in r["groups"])

    # the explorer's session API: the method is offered, its settings are flags, a run shows its loss and maps
    from ldm.explorer.session import Explorer, Settings

    explorer = Explorer(_golden_model("sd"), SD[1], SD[3])
    assert "word_max" in explorer.methods() and explorer.method_fields("word_max")["word_step"] == "50.0"
    config, flags = explorer.method_config("word_max", {"word_step": "80", "attention_res": "16"})
    assert config.word_step == 80.0 and flags == ["--g_word_step", "80"]
    result = explorer.run("a cat and a frog", "frog", Settings(steps=3, scale=3, H=64, W=64), config,
                          ae_flags=flags, method="word_max")  # fmt: skip
    assert result.method == "word_max" and "--guidance word_max" in result.command
    trace = result.excited
    assert len(trace.maps) == 3 and trace.maps[0].shape == (1, 16, 16) and trace.method_loss[2] is None
    for step in (0, 1):  # the method's own loss (1 - the word's max) of the maps shown at a guided step
        assert abs(trace.method_loss[step] - (1.0 - float(trace.maps[step][0].max()))) < 1e-5


def test_flags_come_from_the_config_fields():
    parser = argparse.ArgumentParser()
    add_guidance_args(parser)
    names = {a.dest for a in parser._actions}
    assert {"guidance", "guidance_config", "g_attention_res", "g_thresholds", "g_scale_range"} <= names
    # the A&E flags are generated the same way and keep their historical value syntax
    expected = {"attention_res": int, "scale_factor": float, "softmax_end": str, "max_refinement_steps": int}
    assert all(field_parser(AttendExciteConfig, k) is v for k, v in expected.items())
    assert field_parser(AttendExciteConfig, "thresholds")("0:0.05,10:0.5") == {0: 0.05, 10: 0.5}
    assert field_parser(AttendExciteConfig, "scale_range")("1.0,0.5") == (1.0, 0.5)
    assert field_parser(AttendExciteConfig, "schedule_steps")("none") is None
    assert field_parser(AttendExciteConfig, "smooth_attentions")("off") is False
    args = parser.parse_args(["--guidance", "ae", "--g_scale_factor", "5", "--g_thresholds", "0:0.2"])
    args.ae_tokens, args.config = "cat", None
    choice = guidance_from_args(args)
    assert choice.name == "ae" and choice.config.scale_factor == 5.0 and choice.config.thresholds == {0: 0.2}
    with pytest.raises(UserError, match="--guidance ae needs --ae_tokens"):
        guidance_from_args(argparse.Namespace(guidance="ae", ae_tokens="", config=None))
    plain = guidance_from_args(argparse.Namespace(ae_tokens="", config=None))
    assert plain.name == "plain" and not plain.active


def test_a_setting_the_method_lacks_is_an_error(word_max):
    parser = argparse.ArgumentParser()
    add_guidance_args(parser)
    args = parser.parse_args(["--guidance", "word_max", "--g_thresholds", "0:0.5"])
    args.ae_tokens = "cat"
    with pytest.raises(UserError, match="thresholds is not a setting of guidance method 'word_max'; its settings: "
                       "attention_res, word_step, max_iter_to_alter"):  # fmt: skip
        guidance_from_args(args)


def test_guidance_yaml_block(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("guidance:\n  target: ldm.guidance.attend_excite.config.AttendExciteConfig\n"
                    "  params:\n    attention_res: 8\n    softmax_scale: 10\n")  # fmt: skip
    method, config = load_guidance_yaml(path)
    assert method.name == "ae" and config.attention_res == 8 and config.softmax_scale == 10.0
    args = argparse.Namespace(guidance=None, guidance_config=str(path), ae_tokens="cat", config=None, ae_scale_factor=7)
    choice = guidance_from_args(args)  # the file names the method; --ae_<field> still apply on top
    assert choice.name == "ae" and choice.config.attention_res == 8 and choice.config.scale_factor == 7
    path.write_text("guidance:\n  target: ldm.guidance.attend_excite.config.Nope\n")
    with pytest.raises(UserError, match="target ldm.guidance.attend_excite.config.Nope cannot be imported"):
        load_guidance_yaml(path)
    path.write_text("guidance:\n  target: ldm.guidance.attend_excite.config.AttendExciteConfig\n  params: {bogus: 1}\n")
    with pytest.raises(UserError, match="bogus is not a setting of guidance method 'ae'"):
        load_guidance_yaml(path)


def test_unknown_method_is_one_line(tmp_path):
    with pytest.raises(SystemExit):  # argparse: invalid choice, status 2
        load_script("stable_txt2img").get_parser().parse_args(["--guidance", "nope"])
    with pytest.raises(UserError, match="--guidance nope: unknown guidance method; use one of plain, ae"):
        guidance.get_method("nope")


# --- the model-level guidance pass: SDXL-shaped conditioning (context + vector y) --------------------------------
def tiny_adm_model():
    """A LatentDiffusion whose UNet takes a vector y beside the context (``conditioning_key: crossattn-adm``)."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    config = OmegaConf.load(REPO / "configs/tests/golden_tiny_sd.yaml").model
    config.params.conditioning_key = "crossattn-adm"
    config.params.pop("personalization_config")
    config.params.unet_config.params.update(num_classes="sequential", adm_in_channels=6)
    torch.manual_seed(0)
    model = instantiate_from_config(config).eval()
    with torch.no_grad():
        for p in model.model.parameters():
            p.normal_(0, 0.2)  # the zero-initialised output layers would hide y's effect
    return model


def test_the_guidance_pass_keeps_the_vector_y():
    model = tiny_adm_model()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    y = torch.randn(2, 6, generator=g)
    t = torch.tensor([500, 500])
    cfg = AttendExciteConfig(token_indices=(2, 5), max_iter_to_alter=1, thresholds={}, schedule_steps=None)

    def guided(y_value):
        cond = {"c_crossattn": [context], "c_adm": [y_value]}
        with torch.no_grad():
            return AttendAndExcite(model, cfg)(x, t, 0, 10, cond)

    ours = guided(y)
    assert not torch.equal(ours, guided(torch.zeros_like(y)))  # y reaches the guidance pass
    # the same update computed by hand: the UNet called with the context and y, per sample
    unet = model.model.diffusion_model
    expected = []
    for b in range(2):
        leaf = x[b : b + 1].clone().requires_grad_(True)
        store = AttentionStore([16])
        with register_attention_controller(unet, store):
            unet(leaf, t[:1], context=context[b : b + 1], y=y[b : b + 1])
        maps = store.aggregate(1, 16)[0]
        from ldm.guidance.attend_excite.maps import attend_excite_loss, max_attention_per_token

        loss = attend_excite_loss(max_attention_per_token(maps, ((2,), (5,)), cfg))
        grad = torch.autograd.grad(loss, leaf)[0]
        expected.append(leaf.detach() - 20.0 * grad)
    assert torch.allclose(ours, torch.cat(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ae_tokens", "circle", "--g_attention_res", "32"], "--g_attention_res 32: at --H 64 --W 64 this model's"),
        (["--ae_tokens", "circle", "--ae_attention_res", "32"], "--ae_attention_res 32: at --H 64 --W 64"),
        (["--ae_tokens", "circle", "--guidance", "plain", "--g_attention_res", "8"],
         "attention_res is not a setting of guidance method 'plain'"),
        (["--ae_tokens", "circle", "--guidance_config", "{yaml}", "--ae_config", "configs/guidance/seed_fork.yaml"],
         "--guidance_config and --ae_config both give A&E settings"),
        (["--ae_tokens", "circle", "--guidance_config", "{yaml}", "--guidance", "plain"],
         "holds settings of 'ae', but --guidance is 'plain'"),
    ],
)  # fmt: skip
def test_bad_guidance_flags_are_one_line_before_loading(tmp_path, flags, message):
    yaml = tmp_path / "g.yaml"
    yaml.write_text("guidance:\n  target: ldm.guidance.attend_excite.config.AttendExciteConfig\n  params: {}\n")
    toy = ["--config", str(REPO / "configs/toyworld2/txt2img-inference.yaml"), "--H", "64", "--W", "64",
           "--ckpt", str(tmp_path / "never-read.safetensors"), "--outdir", str(tmp_path / "out")]  # fmt: skip
    (tmp_path / "never-read.safetensors").write_bytes(b"")  # the checks come before any file is read
    with pytest.raises(UserError, match=message):
        load_script("stable_txt2img").main([*toy, *(f.replace("{yaml}", str(yaml)) for f in flags)])
