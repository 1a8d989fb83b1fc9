"""Textual inversion through Lightning DDP (2 CPU processes, gloo) and bf16-mixed precision, from the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture
from inversion_helpers import inversion_argv, make_images

from ldm.modules.embedding_interop import read_embeddings


def run_main(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
def test_ddp_two_processes_scale_lr_and_write_embeddings(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    data = make_images(tmp_path / "cat")
    argv = inversion_argv(data, tmp_path / "logs", "ldm", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
    log = run_main([*argv, "--max_steps", "2", "lightning.callbacks.image_logger.params.disabled=true"])
    assert "x 2 (devices)" in log  # lr = accumulate x devices x nodes x batch x base_lr
    (run,) = (tmp_path / "logs").iterdir()  # one run folder for both ranks
    embeddings = read_embeddings(run / "checkpoints" / "embeddings_gs-2.pt")
    assert embeddings.vectors["*"].shape == (1, 32) and torch.isfinite(embeddings.vectors["*"]).all()


@pytest.mark.slow
def test_bf16_mixed_precision_keeps_fp32_embeddings(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    data = make_images(tmp_path / "cat")
    argv = inversion_argv(data, tmp_path / "logs", "ldm", "--accelerator", "cpu", "--precision", "bf16-mixed")
    run_main([*argv, "--max_steps", "2", "lightning.callbacks.image_logger.params.disabled=true"])
    (run,) = (tmp_path / "logs").iterdir()
    from safetensors.torch import load_file

    vector = load_file(str(run / "checkpoints" / "embeddings.safetensors"))["string_to_param.*"]  # stored as trained
    assert vector.dtype == torch.float32 and torch.isfinite(vector).all()
