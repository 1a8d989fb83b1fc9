"""ToyWorld 2 smoke test: configs/toyworld2/txt2img.yaml (made tiny by configs/tests/toyworld2_tiny.yaml) trains three
steps through main.py: the loss is finite, the CLIP text tower and the UNet are trained jointly, and the reused
ToyWorld autoencoder stays exactly the shipped one. Also checks the inference and inversion configs build.

Three steps, not two: the UNet's output conv and its cross-attention blocks' proj_out start at zero, so step 1 only
moves the output conv, step 2 the proj_out layers, and step 3 is the first with a gradient into the text tower.
AdamW's weight decay changes every weight even without a gradient, so "changed" is checked on the tower's LayerNorm
biases: they start at zero, where the decay leaves them, so only a gradient moves them."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf

from ldm.toyworld.detect import parse_caption
from ldm.toyworld.export import ldm_state, to_fp16
from ldm.util import instantiate_from_config, load_state_dict_file

TXT2IMG = REPO / "configs" / "toyworld2" / "txt2img.yaml"
TINY = REPO / "configs" / "tests" / "toyworld2_tiny.yaml"
AUTOENCODER = REPO / "models" / "toyworld" / "autoencoder.safetensors"
SEED = 23


def _initial_model(config):
    """The model as main.run builds it before training (it seeds, then instantiates the model first)."""
    import pytorch_lightning as pl

    pl.seed_everything(SEED, workers=True)
    return instantiate_from_config(config.model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not AUTOENCODER.is_file():
        pytest.skip(f"{AUTOENCODER} missing (scripts/train_toyworld.sh makes it)")
    import main

    logdir = tmp_path_factory.mktemp("toyworld2")
    argv = ["-t", "--base", str(TXT2IMG), str(TINY), "-l", str(logdir), "-n", "smoke", "--seed", str(SEED),
            "--accelerator", "cpu", "--scale_lr", "False", "--logger", "csv"]  # fmt: skip
    result = main.run(argv)
    config = OmegaConf.merge(OmegaConf.load(TXT2IMG), OmegaConf.load(TINY))
    return result, _initial_model(config)


def test_three_steps_train_text_tower_jointly(trained):
    result, initial = trained
    model = result.model
    assert result.trainer.global_step == 3
    loss = result.trainer.callback_metrics["train/loss_step"]
    assert math.isfinite(float(loss)) and float(loss) > 0
    assert model.cond_stage_trainable and type(model.cond_stage_model).__name__ == "FrozenCLIPEmbedder"

    def changed(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, bool]:
        after = dict(a.named_parameters())
        return {k: not torch.equal(after[k].detach().cpu(), v.detach().cpu()) for k, v in b.named_parameters()}

    tower = changed(model.cond_stage_model, initial.cond_stage_model)
    assert all(tower.values()), [k for k, v in tower.items() if not v]  # every tower tensor got an update
    biases = [p for n, p in initial.cond_stage_model.named_parameters() if "layer_norm" in n and n.endswith(".bias")]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)  # zero at the start...
    moved = [p for n, p in model.cond_stage_model.named_parameters() if "layer_norm" in n and n.endswith(".bias")]
    assert all(torch.count_nonzero(b) > 0 for b in moved)  # ...moved by a gradient through the diffusion loss
    unet = changed(model.model, initial.model)
    assert sum(unet.values()) > 0.9 * len(unet)
    # the tower gets its gradient through the loss: it must be in the optimiser
    optimised = {id(p) for group in result.trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in model.cond_stage_model.parameters())


def test_autoencoder_is_the_shipped_one_and_frozen(trained):
    result, _ = trained
    shipped = load_state_dict_file(str(AUTOENCODER))
    state = result.model.first_stage_model.state_dict()
    assert shipped.keys() <= state.keys() and len(shipped) > 50
    for key, value in shipped.items():
        assert torch.equal(state[key].float(), value.float()), key
    assert not any(p.requires_grad for p in result.model.first_stage_model.parameters())


def test_captions_are_noisy_and_tokenised_by_clip(trained):
    result, _ = trained
    dataset = result.trainer.datamodule.datasets["train"].dataset
    assert (dataset.p_over_describe, dataset.p_under_describe) == (0.2, 0.1)
    ids = result.model.cond_stage_model.tokenize(["a red circle and a blue square"])  # [1, 77]
    assert ids.shape == (1, 77) and ids[0, 0].item() == 49406 and ids[0, 8].item() == 49407


@pytest.mark.parametrize("name", ["txt2img-inference.yaml", "finetune.yaml"])
def test_sampling_and_inversion_configs_build_frozen(name):
    config = OmegaConf.load(REPO / "configs" / "toyworld2" / name)
    config.model.params.pop("ckpt_path", None)  # weights not shipped yet; the architecture must match training
    tiny = OmegaConf.load(TINY).model
    model = instantiate_from_config(OmegaConf.merge(config.model, tiny))
    assert not any(p.requires_grad for p in model.model.parameters())
    assert not any(p.requires_grad for p in model.cond_stage_model.parameters())
    assert [p.shape for p in model.embedding_manager.embedding_parameters()][0][-1] == 32
    reference = OmegaConf.merge(OmegaConf.load(TXT2IMG).model, tiny)
    assert config.model.params.unet_config == OmegaConf.load(TXT2IMG).model.params.unet_config
    assert config.model.params.cond_stage_config == OmegaConf.load(TXT2IMG).model.params.cond_stage_config
    assert reference.params.unet_config.params.context_dim == reference.params.cond_stage_config.params.hidden_size


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_and_neglect_measurement_of_a_pilot(trained, tmp_path):
    """The sweep's path: export the (tiny) run as scripts/train_toyworld2.sh does, load it with the inference config,
    sample plain two-subject prompts and write the detector's verdicts."""
    from safetensors.torch import save_file

    result, _ = trained
    state = to_fp16(ldm_state(result.model.state_dict()))
    assert not any(k.startswith("model_ema.") for k in state)
    ckpt = tmp_path / "pilot.safetensors"
    save_file(state, str(ckpt))
    config = OmegaConf.load(REPO / "configs" / "toyworld2" / "txt2img-inference.yaml")
    tiny = OmegaConf.load(TINY).model.params
    for key in ("unet_config", "cond_stage_config"):
        config.model.params[key] = OmegaConf.merge(config.model.params[key], tiny[key])
    config_path = tmp_path / "inference.yaml"
    OmegaConf.save(config, config_path)

    neglect = _load_script("toyworld2_neglect")
    out = tmp_path / "neglect.json"
    argv = ["--ckpt", str(ckpt), "--config", str(config_path), "--n", "3", "--steps", "2", "--out", str(out)]
    assert neglect.main(argv) == 0
    report = json.loads(out.read_text())
    samples = report["samples"]
    assert [s["seed"] for s in samples] == [60000, 60001, 60002]
    assert report["missing_rate"] == pytest.approx(sum(s["missing"] for s in samples) / 3)
    for s in samples:
        (c1, s1), (c2, s2) = parse_caption(s["prompt"])
        assert c1 != c2 and s1 != s2 and not (s["all_correct"] and s["missing"])


def test_star_inversion_runs_on_the_clip_tower(trained, tmp_path):
    """configs/toyworld2/finetune.yaml (made tiny) learns "*" for two steps against the exported tiny model: only
    the placeholder vectors move, and they have the tower's width."""
    from safetensors.torch import save_file

    import main

    result, _ = trained
    ckpt = tmp_path / "model.safetensors"
    save_file(to_fp16(ldm_state(result.model.state_dict())), str(ckpt))
    tiny = OmegaConf.load(TINY).model.params
    overlay = OmegaConf.create({
        "model": {"params": {"unet_config": tiny.unet_config, "cond_stage_config": tiny.cond_stage_config}},
        "data": {"params": {"batch_size": 1, "train": {"params": {"repeats": 1}}}},
        "lightning": {"trainer": {"max_steps": 2, "enable_progress_bar": False},
                      "callbacks": {"image_logger": {"params": {"batch_frequency": 1000}}}},
    })  # fmt: skip
    overlay_path = tmp_path / "overlay.yaml"
    OmegaConf.save(overlay, overlay_path)
    argv = ["-t", "--base", str(REPO / "configs" / "toyworld2" / "finetune.yaml"), str(overlay_path),
            "-l", str(tmp_path / "logs"), "-n", "star", "--actual_resume", str(ckpt),
            "--data_root", str(REPO / "data" / "toyworld" / "heldout"), "--init_word", "object",
            "--logger", "csv", "--accelerator", "cpu"]  # fmt: skip
    inverted = main.run(argv)
    assert inverted.trainer.global_step == 2
    model = inverted.model
    vectors = list(model.embedding_manager.embedding_parameters())
    assert vectors and all(v.shape[-1] == 32 and v.requires_grad for v in vectors)
    tower_model = model.cond_stage_model
    start = tower_model.token_embedding(torch.tensor([tower_model.single_token_id("object")]))[0]  # [32]
    assert all(not torch.allclose(row, start) for v in vectors for row in v.detach().reshape(-1, 32))  # learned
    assert not any(p.requires_grad for p in model.cond_stage_model.parameters())
    tower = result.model.cond_stage_model.state_dict()
    for key, value in model.cond_stage_model.state_dict().items():  # the frozen tower is the exported one
        assert torch.equal(value, tower[key].half().float()), key
    assert (inverted.logdir / "checkpoints" / "embeddings.pt").is_file()


def test_warm_start_keeps_the_first_toys_unet_and_starts_the_ema_from_it():
    """scripts/train_toyworld2.sh's warm start: the first toy's UNet in ToyWorld 2's layout. The added 16x16
    cross-attention blocks start as identities (zero proj_out), so the warm-started UNet computes exactly what the
    first toy's UNet does for the same context; the EMA starts from the loaded weights, not from random ones."""
    toy1 = REPO / "models" / "toyworld" / "txt2img.safetensors"
    if not toy1.is_file():
        pytest.skip(f"{toy1} missing (scripts/train_toyworld.sh makes it)")
    config = OmegaConf.load(TXT2IMG)
    config.model.params.ckpt_path = str(toy1)
    config.model.params.ignore_keys = ["cond_stage_model."]
    model = instantiate_from_config(config.model)
    shipped = load_state_dict_file(str(toy1))
    assert float(model.scale_factor) == pytest.approx(float(shipped["scale_factor"]))

    toy1_config = OmegaConf.load(REPO / "configs" / "toyworld" / "txt2img.yaml")
    reference = instantiate_from_config(toy1_config.model.params.unet_config)
    prefix = "model.diffusion_model."
    reference.load_state_dict({k[len(prefix) :]: v.float() for k, v in shipped.items() if k.startswith(prefix)})
    unet = model.model.diffusion_model
    added = [k for k in unet.state_dict() if k not in reference.state_dict()]
    assert added and all(".1." in k or ".2." in k for k in added)  # only the new transformer blocks
    torch.manual_seed(0)
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), torch.randn(2, 77, 128)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, context=context), reference(x, t, context=context))
    ema = dict(model.model_ema.named_buffers())
    for name, p in model.model.named_parameters():
        assert torch.equal(ema[model.model_ema.m_name2s_name[name]], p.detach()), name
