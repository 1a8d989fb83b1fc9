"""Textual inversion into both SDXL towers: a command-line run of main.py on the tiny SDXL model (each tower's part
starts at its own tower's embedding of the init word; only the placeholder moves) and the clip_l/clip_g files."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import REPO
from inversion_helpers import INVERSION_TINY, make_images
from safetensors.torch import load_file

from ldm.modules import embedding_interop as ei
from ldm.util import load_state_dict_file

WEIGHTS = REPO / "tests" / "fixtures" / "sdxl" / "weights" / "tiny_sdxl.safetensors"
TINY = str(REPO / "configs" / "tests" / "tiny_sdxl.yaml")
PERSONALIZATION = str(REPO / "configs" / "tests" / "tiny_sdxl_personalization.yaml")
MAX_STEPS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import main

    root = tmp_path_factory.mktemp("sdxl_inversion")
    argv = ["-t", "--base", TINY, PERSONALIZATION, INVERSION_TINY, "--actual_resume", str(WEIGHTS),
            "--data_root", str(make_images(root / "cat")), "--init_word", "sculpture", "-l", str(root / "logs"),
            "--logger", "csv", f"lightning.trainer.max_steps={MAX_STEPS}",
            "lightning.modelcheckpoint.params.every_n_train_steps=3"]  # fmt: skip
    result = main.run(argv)
    return result.trainer, result.logdir


def test_inversion_learns_one_vector_per_tower(trained):
    trainer, run = trained
    model = trainer.lightning_module
    assert trainer.global_step == MAX_STEPS
    rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
    assert all(math.isfinite(float(r["train/loss_step"])) for r in rows if r.get("train/loss_step"))
    reference = load_state_dict_file(WEIGHTS)
    state = model.state_dict()
    for key, value in reference.items():
        if key in state:
            assert torch.equal(state[key].cpu(), value.float()), key
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["embedding_manager.string_to_param_dict.*"]
    word = model.cond_stage_model.single_token_id("sculpture")
    init_l = reference["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"][word]
    init_g = reference["conditioner.embedders.1.model.token_embedding.weight"][word]
    initial = model.embedding_manager.initial_embeddings["*"][0].cpu()
    assert torch.equal(initial, torch.cat([init_l, init_g]).float())  # each part from its own tower
    learned = model.embedding_manager.string_to_param_dict["*"].detach().cpu()[0]
    assert (learned[:16] - initial[:16]).abs().max() > 1e-5 and (learned[16:] - initial[16:]).abs().max() > 1e-5


def test_saved_as_clip_l_clip_g(trained):
    trainer, run = trained
    learned = trainer.lightning_module.embedding_manager.string_to_param_dict["*"].detach().cpu()
    flat = load_file(str(run / "checkpoints" / "embeddings.safetensors"))
    assert sorted(flat) == ["clip_g", "clip_l"]
    assert torch.equal(flat["clip_l"], learned[:, :16]) and torch.equal(flat["clip_g"], learned[:, 16:])
    back = ei.read_embeddings(run / "checkpoints" / "embeddings.pt")
    assert back.towers == (("clip_l", 16), ("clip_g", 24)) and torch.equal(next(iter(back.vectors.values())), learned)
