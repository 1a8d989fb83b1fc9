"""Textual inversion on Stable Diffusion 2.x: the OpenCLIP splice, a command-line run on the tiny SD 2 model with the
frozen-weights check, and 1024-wide (SD 2) embedding files."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import REPO, require_fixture
from inversion_helpers import INVERSION_TINY, make_images
from omegaconf import OmegaConf

from ldm.modules import embedding_interop as ei
from ldm.util import instantiate_from_config, load_state_dict_file

WEIGHTS = REPO / "tests" / "fixtures" / "sd2" / "weights" / "tiny_sd2.safetensors"
TINY_SD2 = {p: str(REPO / "configs" / "tests" / f"tiny_sd2_{p}.yaml") for p in ("eps", "v")}
PERSONALIZATION = str(REPO / "configs" / "tests" / "tiny_sd2_personalization.yaml")
MAX_STEPS = 10
OPENCLIP_STAR = 265  # id of '*' in the CLIP BPE vocabulary


def sd2_inversion_argv(data_root, logdir, parameterization: str = "v", *extra: str) -> list[str]:
    return [
        "-t",
        "--base", TINY_SD2[parameterization], PERSONALIZATION, INVERSION_TINY,
        "--actual_resume", str(WEIGHTS),
        "--data_root", str(data_root),
        "--init_word", "sculpture",
        "-l", str(logdir),
        "--logger", "csv",
        f"lightning.trainer.max_steps={MAX_STEPS}",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 10-step inversion of the tiny SD 2 v-model from the command-line entry point."""
    require_fixture(WEIGHTS)
    import main

    root = tmp_path_factory.mktemp("sd2_inversion")
    result = main.run(sd2_inversion_argv(make_images(root / "cat"), root / "logs"))
    return result.trainer, result.logdir


def test_cli_run_writes_embeddings_and_finite_losses(trained):
    trainer, run = trained
    assert trainer.global_step == MAX_STEPS
    assert trainer.lightning_module.parameterization == "v"
    for name in ("embeddings.pt", "embeddings.safetensors", "last.ckpt"):
        assert (run / "checkpoints" / name).is_file(), name
    rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_only_the_placeholder_moved(trained):
    """Every weight of the tiny SD 2 checkpoint (UNet, autoencoder, OpenCLIP tower) is unchanged; the placeholder
    started at the tower's embedding of the initializer word and moved."""
    trainer, run = trained
    model = trainer.lightning_module
    reference = load_state_dict_file(WEIGHTS)
    state = model.state_dict()
    for key, value in reference.items():
        assert torch.equal(state[key].cpu(), value.float()), key
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["embedding_manager.string_to_param_dict.*"]
    word_id = model.cond_stage_model.single_token_id("sculpture")
    init = reference["cond_stage_model.model.token_embedding.weight"][word_id].float()
    assert torch.equal(model.embedding_manager.initial_embeddings["*"][0].cpu(), init)
    learned = model.embedding_manager.string_to_param_dict["*"].detach().cpu()[0]
    assert (learned - init).abs().max() > 1e-4
    saved = ei.read_embeddings(run / "checkpoints" / "embeddings.pt")
    assert saved.tokens == {"*": OPENCLIP_STAR}
    assert torch.equal(saved.vectors["*"][0], learned)


def test_splice_reaches_the_tower_output():
    """The conditioning with the manager equals the tower run on token embeddings whose '*' rows are the vector."""
    config = OmegaConf.merge(OmegaConf.load(TINY_SD2["eps"]), OmegaConf.load(PERSONALIZATION))
    config.model.params.ckpt_path = str(require_fixture(WEIGHTS))
    model = instantiate_from_config(config.model).eval()
    vector = torch.randn(1, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.embedding_manager.string_to_param_dict["*"].copy_(vector)
        prompts = ["a photo of *", "* next to a *"]
        cond = model.get_learned_conditioning(prompts)
        embedder = model.cond_stage_model
        ids = embedder.tokenize(prompts)
        emb = embedder.token_embedding(ids)
        emb[ids == OPENCLIP_STAR] = vector[0]
        expected = embedder.model(emb, skip_last=1)  # penultimate, as the config
    assert torch.allclose(cond, expected, atol=1e-6)
    assert not torch.allclose(cond, model.cond_stage_model.encode(prompts), atol=1e-3)


@pytest.mark.parametrize("fmt", ei.FORMATS)
def test_1024_wide_files_load_into_the_sd2_manager(tmp_path, fmt):
    """SD 2 embedding files (1024 wide, any format) go into the full-size v2-finetune manager (built on the meta
    device); their token ids come from the OpenCLIP tokenizer. A 768-wide (SD v1) file is refused naming its family."""
    config = OmegaConf.load(REPO / "configs" / "stable-diffusion" / "v2-finetune.yaml")
    with torch.device("meta"):
        model = instantiate_from_config(config.model)
    manager = model.embedding_manager
    assert manager.token_dim == 1024
    vectors = torch.randn(2, 1024, generator=torch.Generator().manual_seed(0))
    path = ei.write_embeddings(ei.Embeddings({"*": vectors}, {"*": OPENCLIP_STAR}, name="*"), tmp_path / "e.pt", fmt)
    loaded = ei.load_into_manager(manager, path, placeholder="@", tokenizer=model.cond_stage_model.tokenizer)
    assert loaded.tokens == {"@": model.cond_stage_model.single_token_id("@")}
    assert manager.string_to_param_dict["@"].shape == (2, 1024)
    assert isinstance(ei.tokenizer_for_dim(1024), type(model.cond_stage_model.tokenizer))
    v1_file = ei.write_embeddings(ei.Embeddings({"*": torch.randn(1, 768)}, {"*": OPENCLIP_STAR}), tmp_path / "v1.pt")
    with pytest.raises(ei.EmbeddingFileError, match="SD v1"):
        ei.load_into_manager(manager, v1_file)


def test_merge_script_for_sd2_files(tmp_path):
    """scripts/merge_embeddings.py -sd2 merges 1024-wide files, looking renamed placeholders up with OpenCLIP's
    tokenizer; -sd (768) refuses them."""
    from scripts.merge_embeddings import main as merge_main

    for i in range(2):
        vectors = torch.randn(1, 1024, generator=torch.Generator().manual_seed(i))
        ei.write_embeddings(ei.Embeddings({"*": vectors}, {"*": OPENCLIP_STAR}), tmp_path / f"{i}.pt", "ti")
    inputs = ["--manager_ckpts", str(tmp_path / "0.pt"), str(tmp_path / "1.pt"), "--rename", "*=@"]
    assert merge_main([*inputs, "-sd2", "--output_path", str(tmp_path / "m.pt")]) == 0
    merged = ei.read_embeddings(tmp_path / "m.pt")
    assert merged.tokens == {
        "*": OPENCLIP_STAR,
        "@": ei.tokenizer_for_dim(1024)("@", add_special_tokens=False)["input_ids"][0],
    }
    with pytest.raises(ei.EmbeddingFileError, match="size 1024"):
        merge_main([*inputs, "-sd", "--output_path", str(tmp_path / "v1.pt")])
