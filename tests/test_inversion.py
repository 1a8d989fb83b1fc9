"""Textual inversion end to end on the goldens' tiny LDM (CPU): files, loss, what moves and what must not, resume,
and an exception inside a training step."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, require_fixture
from inversion_helpers import TINY_LDM, inversion_argv, make_images
from omegaconf import OmegaConf

from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.util import CheckpointError, instantiate_from_config, load_state_dict_file

MAX_STEPS = 20  # configs/tests/inversion_tiny.yaml


class FailingLatentDiffusion(LatentDiffusion):
    """The tiny model, raising inside `training_step` at `fail_at_step`."""

    def __init__(self, *args, fail_at_step: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at_step = fail_at_step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError("boom inside training_step")
        return super().training_step(batch, batch_idx)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 20-step inversion run shared by the tests below."""
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    import main

    root = tmp_path_factory.mktemp("inversion")
    data = make_images(root / "cat")
    result = main.run(inversion_argv(data, root / "logs"))
    return result.trainer, result.logdir


def test_run_folder_layout(trained):
    _, run = trained
    ckpt = run / "checkpoints"
    assert run.name.startswith("cat") and run.name.endswith("_golden_tiny_ldm")
    for name in ("embeddings.pt", "embeddings.safetensors", "embeddings_gs-10.pt", f"embeddings_gs-{MAX_STEPS}.pt",
                 "last.ckpt"):  # fmt: skip
        assert (ckpt / name).is_file(), name
    assert len(list((run / "configs").glob("*-project.yaml"))) == 1
    assert len(list((run / "configs").glob("*-lightning.yaml"))) == 1
    logged = {p.name.split("_gs-")[0] for p in (run / "images" / "train").glob("*.jpg")}
    assert {"inputs", "reconstruction", "conditioning", "samples", "samples_scaled"} <= logged
    saved = OmegaConf.load(next((run / "configs").glob("*-project.yaml")))
    assert saved.model.params.ckpt_path == str(GOLDEN_WEIGHTS["ldm"])  # what -r rebuilds the frozen model from


def test_loss_finite_and_steps(trained):
    trainer, run = trained
    assert trainer.global_step == MAX_STEPS
    rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_only_placeholder_moved(trained):
    """Every parameter and buffer of the base model equals the checkpoint bit for bit; the placeholder moved away
    from its initializer word's embedding, which itself is unchanged."""
    trainer, run = trained
    model = trainer.lightning_module
    reference = load_state_dict_file(GOLDEN_WEIGHTS["ldm"])
    state = model.state_dict()
    for key, value in reference.items():
        if not key.startswith("embedding_manager."):  # the base checkpoint's own embeddings are not loaded
            assert torch.equal(state[key].cpu(), value), key
    word_id = model.cond_stage_model.single_token_id("sculpture")
    init = reference["cond_stage_model.transformer.token_emb.weight"][word_id]
    assert torch.equal(model.embedding_manager.initial_embeddings["*"][0].cpu(), init)
    learned = model.embedding_manager.string_to_param_dict["*"].detach().cpu()[0]
    assert (learned - init).abs().max() > 1e-3
    from ldm.modules.embedding_interop import read_embeddings

    assert torch.equal(read_embeddings(run / "checkpoints" / "embeddings.pt").vectors["*"][0], learned)
    assert model.embedding_manager.progress_step == MAX_STEPS - 1  # set_progress(global_step) every step


def test_frozen_checkpoint_holds_only_embeddings(trained):
    _, run = trained
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == MAX_STEPS
    assert ckpt["state_dict"] and all(k.startswith("embedding_manager.") for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"]


def test_resume_continues_at_saved_step(trained, tmp_path):
    import main

    _, run = trained
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    saved = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trainer = main.run(["-t", "-r", str(copy), "--max_steps", str(MAX_STEPS + 2), "--logger", "csv"]).trainer
    assert trainer.global_step == MAX_STEPS + 2
    optimizer = trainer.optimizers[0]
    (state,) = optimizer.state.values()
    assert int(state["step"]) == MAX_STEPS + 2  # AdamW moments restored, not restarted
    assert (copy / "checkpoints" / f"embeddings_gs-{MAX_STEPS + 2}.pt").is_file()
    # the saved embeddings were the starting point: two more small steps stay close to them
    start = saved["state_dict"]["embedding_manager.string_to_param_dict.*"]
    now = trainer.lightning_module.embedding_manager.string_to_param_dict["*"].detach().cpu()
    assert not torch.equal(now, start) and (now - start).abs().max() < 0.1


def test_failed_resume_overwrites_nothing(trained, tmp_path):
    """A resume that fails while restoring (here: an unsafe checkpoint) leaves the run's files untouched."""
    import main

    _, run = trained
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    ckpt = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["payload"] = torch.nn.Linear(1, 1)  # a class weights_only loading refuses
    torch.save(ckpt, copy / "checkpoints" / "last.ckpt")
    before = {p.name: p.read_bytes() for p in (copy / "checkpoints").iterdir()}
    with pytest.raises(CheckpointError, match=r"--resume: refused to load '.*last.ckpt'") as info:
        main.run(["-t", "-r", str(copy), "--max_steps", str(MAX_STEPS + 2), "--logger", "csv"])
    assert "weights_only" not in str(info.value)  # never the advice to unpickle it anyway
    after = {p.name: p.read_bytes() for p in (copy / "checkpoints").iterdir()}
    assert after == before


def test_exception_in_training_step_leaves_embeddings(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    import main

    data = make_images(tmp_path / "dog", count=2)
    argv = inversion_argv(data, tmp_path / "logs") + [
        "model.target=test_inversion.FailingLatentDiffusion",
        "model.params.fail_at_step=3",
        "lightning.callbacks.image_logger.params.disabled=true",
    ]
    with pytest.raises(RuntimeError, match="boom inside training_step"):
        main.run(argv)
    (run,) = (tmp_path / "logs").iterdir()
    assert (run / "checkpoints" / "embeddings.pt").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3


@pytest.fixture(scope="module")
def tiny_model():
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    config = OmegaConf.load(TINY_LDM)
    config.model.params.ckpt_path = str(GOLDEN_WEIGHTS["ldm"])
    return instantiate_from_config(config.model)


def test_frozen_parts_have_no_grad_and_stay_in_eval(tiny_model):
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable == ["embedding_manager.string_to_param_dict.*"]
    tiny_model.train()
    assert not tiny_model.model.training and not tiny_model.cond_stage_model.training
    assert not tiny_model.first_stage_model.training
    optimizer = tiny_model.configure_optimizers()
    assert [p for g in optimizer.param_groups for p in g["params"]] == list(
        tiny_model.embedding_manager.embedding_parameters()
    )


def test_unfrozen_optimizer_has_two_groups():
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    config = OmegaConf.load(TINY_LDM)
    config.model.params.unfreeze_model = True
    config.model.params.model_lr = 1.0e-7
    model = instantiate_from_config(config.model)
    model.learning_rate = 0.02
    groups = model.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [0.02, 1.0e-7]
    assert len(groups[1]["params"]) == len(list(model.model.parameters())) + len(
        list(model.cond_stage_model.parameters())
    )


def test_posterior_cache_matches_fresh_encoding(tiny_model):
    """The cached moments are those of encoding the image; the encoder runs once per (image, flip)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = {"image": x.permute(0, 2, 3, 1), "image_path": ["a.png", "b.png"], "flipped": torch.tensor([False, True])}
    calls = []

    def encode(images):
        calls.append(images.shape[0])
        return tiny_model.encode_first_stage(images)

    tiny_model.posterior_cache.clear()
    first = tiny_model.posterior_cache.posterior([("a.png", False, (32, 32)), ("b.png", True, (32, 32))], x, encode)
    again = tiny_model.posterior_cache.posterior([("b.png", True, (32, 32))], x[1:], encode)
    assert calls == [2]
    with torch.no_grad():
        fresh = tiny_model.encode_first_stage(x)
    torch.testing.assert_close(first.mean, fresh.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first.logvar, fresh.logvar, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again.mean, fresh.mean[1:], rtol=1e-5, atol=1e-5)
    # latent_from_batch draws z = scale * (mean + std * eps) from the cache: its mean over draws -> scale * mean
    draws = torch.stack([tiny_model.latent_from_batch(batch, x) for _ in range(64)])
    assert calls == [2]
    expected = tiny_model.scale_factor * fresh.mean
    tolerance = 4 * tiny_model.scale_factor * fresh.std.max() / 8  # 4 sigma of a 64-sample mean
    assert (draws.mean(0) - expected).abs().max() < tolerance
