"""Nothing is lost (issue 11, sections 1 and 4): prompts never become paths, reruns keep the earlier record, a full
disk is named and leaves nothing behind, run folders are never shared, broken training images are skipped."""

from __future__ import annotations

import datetime
import errno
import io
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture
from omegaconf import OmegaConf
from PIL import Image

from ldm import inference, txt2img_run
from ldm.ae_flags import DEFAULT_AE_CONFIG, load_ae_config
from ldm.outputs import OutputError

SD_CONFIG = REPO / "configs/tests/golden_tiny_sd.yaml"
LDM_CONFIG = REPO / "configs/tests/golden_tiny_ldm.yaml"
TINY_OPTS = {"steps": 2, "H": 32, "W": 32, "f": 2, "n_iter": 1, "precision": "full", "scale": 3.0}


@pytest.fixture(scope="module")
def sd_model():
    require_fixture(GOLDEN_WEIGHTS["sd"])
    return inference.load_model(SD_CONFIG, GOLDEN_WEIGHTS["sd"])


def sample(model, outdir: Path, prompts: list[str], **kw):
    options = txt2img_run.SamplingOptions(outdir=str(outdir), **(TINY_OPTS | kw))
    return txt2img_run.run_txt2img(model, [prompts], options, load_ae_config(DEFAULT_AE_CONFIG))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- prompt text never becomes a path


@pytest.mark.parametrize(
    "prompt, grid",
    [("../x", "x-0000.png"), ("{victim}", None), ("a cat/dog", "a-cat-dog-0000.png"), ("", "prompt-0000.png")],
)
def test_prompt_never_becomes_a_path(sd_model, tmp_path, prompt, grid):
    outdir = tmp_path / "deep" / "out"
    victim = tmp_path / "deep" / "x"  # files a prompt naming a path would have overwritten
    prompt = prompt.format(victim=victim)
    planted = {}
    for path in (tmp_path / "deep" / "x-0000.png", tmp_path / "deep" / "x.png", Path(f"{victim}-0000.png")):
        path.parent.mkdir(parents=True, exist_ok=True)
        planted[path] = b"precious " + path.name.encode()
        path.write_bytes(planted[path])
    settings = sample(sd_model, outdir, [prompt])
    for path, content in planted.items():
        assert path.read_bytes() == content  # byte-unchanged
    written = files_under(outdir)
    grid = grid or str(victim).strip("/").replace("/", "-")[:100].strip("-.") + "-0000.png"  # separators -> "-"
    assert written == sorted(["samples/00000.png", grid, "settings-0000.json"])
    assert settings["grid"] == grid
    saved = json.loads((outdir / "settings-0000.json").read_text())
    assert saved["options"]["outdir"] == str(outdir) and saved["grid"] == grid
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == sorted(["out", *(p.name for p in planted)])


def test_rerun_keeps_the_first_runs_grid_and_settings(sd_model, tmp_path):
    sample(sd_model, tmp_path, ["a cat"], seed=1)
    first = {name: (tmp_path / name).read_bytes() for name in files_under(tmp_path)}
    sample(sd_model, tmp_path, ["a cat"], seed=2)
    assert files_under(tmp_path) == [
        "a-cat-0000.png", "a-cat-0001.png", "samples/00000.png", "samples/00001.png", "settings-0000.json",
        "settings-0001.json",
    ]  # fmt: skip
    for name, content in first.items():
        assert (tmp_path / name).read_bytes() == content  # the first run's record is untouched
    second = json.loads((tmp_path / "settings-0001.json").read_text())
    assert second["grid"] == "a-cat-0001.png" and second["first_sample"] == 1 and second["options"]["seed"] == 2
    assert (tmp_path / "a-cat-0000.png").read_bytes() != (tmp_path / "a-cat-0001.png").read_bytes()


def test_from_file_prompts_stay_inside(tmp_path):
    """scripts/txt2img.py --from-file (the sampling engine's layout: <method>/<stem>/NNNNN.png, <method>/<stem>.png)
    with path-like prompts: every file lands inside --outdir under a sanitised name."""
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    outdir, victim = tmp_path / "out", tmp_path / "y.png"
    victim.write_bytes(b"precious")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("../y\n/\n")  # "../y" must not reach tmp_path/y.png; "/" alone leaves nothing of itself
    argv = ["--config", str(LDM_CONFIG), "--ckpt_path", str(GOLDEN_WEIGHTS["ldm"]), "--from-file", str(prompts),
            "--outdir", str(outdir), "--H", "32", "--W", "32", "--ddim_steps", "2", "--n_samples", "1",
            "--n_iter", "1", "--device", "cpu"]  # fmt: skip
    script = load_script("txt2img")
    script.main(argv)
    files = files_under(outdir)
    assert victim.read_bytes() == b"precious"
    assert "plain/y/00000.png" in files and "plain/y.png" in files  # "../y" -> stem "y", inside outdir
    assert "plain/prompt/00000.png" in files and "plain/prompt.png" in files  # "/" -> the fallback stem
    assert "settings-0000.json" in files
    script.main(argv)  # a rerun: the images exist and are kept, the run's record is a new settings file
    assert "settings-0001.json" in files_under(outdir)
    assert victim.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == [
        "out", "prompts.txt", "y.png",
    ]  # fmt: skip


# ---------------------------------------------------------------- a full disk


def test_full_disk_during_sampling_is_named_and_leaves_nothing(sd_model, tmp_path, monkeypatch):
    real_save = Image.Image.save
    calls = []

    def save_then_fill_disk(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 1:
            return real_save(self, fp, *args, **kwargs)  # the first sample fits
        Path(fp).write_bytes(b"\x89PNG\r\n")  # a few bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_then_fill_disk)
    with pytest.raises(OutputError, match="no space left on device while writing .*samples/00001.png"):
        sample(sd_model, tmp_path, ["a cat", "a dog"])
    assert files_under(tmp_path) == ["samples/00000.png"]  # no 0-byte, partial or temporary file
    assert Image.open(tmp_path / "samples" / "00000.png").size == (32, 32)


# ---------------------------------------------------------------- run folders (main.py)


def test_two_runs_with_the_same_name_and_second_get_two_folders(tmp_path, monkeypatch):
    from inversion_helpers import inversion_argv, make_images

    import main

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 1, 12, 0, 0)

    monkeypatch.setattr(main.datetime, "datetime", FrozenClock)
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", main.RUN_DIR_ENV):
        monkeypatch.delenv(key, raising=False)
    data = make_images(tmp_path / "data")
    argv = [a for a in inversion_argv(data, tmp_path / "logs") if a != "-t"] + ["-n", "same"]
    first, second = main.run(argv).logdir, main.run(argv).logdir
    assert first.name == "data2024-01-01T12-00-00_same" and second.name == first.name + "_1"
    assert first.is_dir() and second.is_dir()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [first.name, second.name]


def test_only_rank_zero_claims_a_folder(monkeypatch):
    import main

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert main.is_main_process()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child started by Lightning's launcher
    assert not main.is_main_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "3")
    assert not main.is_main_process()


# ---------------------------------------------------------------- training images that fail to decode


def _jpeg(seed: int, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_truncated_jpeg_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    from ldm.data.personalized import PersonalizedBase

    good, broken = _jpeg(0), _jpeg(1)
    (tmp_path / "a.jpg").write_bytes(good)
    (tmp_path / "b.jpg").write_bytes(broken[: len(broken) // 2])  # truncated: PIL's verify() accepts it
    with Image.open(tmp_path / "b.jpg") as image:
        image.verify()  # the old check passed this file
    with caplog.at_level(logging.WARNING):
        dataset = PersonalizedBase(tmp_path, size=32, set="train", repeats=1)
    assert dataset.image_paths == [str(tmp_path / "a.jpg")]
    assert any("b.jpg" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)
    assert dataset[0]["image"].shape == (32, 32, 3)  # the run continues with the good image


def test_no_decodable_image_left_is_an_error_naming_the_folder(tmp_path):
    from ldm.data.image_io import ImageFolderError
    from ldm.data.personalized import PersonalizedBase

    (tmp_path / "b.jpg").write_bytes(_jpeg(1)[:300])
    with pytest.raises(ImageFolderError, match=rf"'{tmp_path}' \(--data_root.*no readable images \(skipped: b.jpg\)"):
        PersonalizedBase(tmp_path, size=32, set="train")


# ---------------------------------------------------------------- the other writers go through ldm/outputs


def _fill_disk_in(monkeypatch, owner, name: str) -> None:
    """Make ``owner.name(obj, path, ...)`` write a few bytes to ``path`` and then fail as a full disk does."""

    def failing(*args, **kwargs):
        target = next(a for a in args if isinstance(a, (str, Path)))
        Path(target).write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(owner, name, failing)


def _write_image_logger(folder: Path) -> Path:
    import torch

    from ldm.callbacks.image_logger import ImageLogger

    images = {"samples": torch.zeros(2, 3, 8, 8)}  # [N, C, H, W] in [-1, 1]
    ImageLogger(batch_frequency=1, max_images=2).save_local(folder, "train", images, 5, 0, 1)
    return folder / "images" / "train" / "samples_gs-000005_e-000000_b-000001.jpg"


def _write_toyworld_grid(folder: Path) -> Path:
    import torch

    from ldm.toyworld.sampling import save_grid

    return save_grid(torch.rand(3, 3, 8, 8), folder / "grids" / "g.png", nrow=2, labels=["a", "b", "c"])


def _write_setup_configs(folder: Path) -> Path:
    from types import SimpleNamespace

    from ldm.callbacks.setup import SetupCallback

    cfg = OmegaConf.create({"model": {"a": 1}})
    callback = SetupCallback(False, "NOW", folder, folder / "checkpoints", folder / "configs", cfg, OmegaConf.create())
    callback.setup(SimpleNamespace(is_global_zero=True), None, "fit")
    assert OmegaConf.load(folder / "configs" / "NOW-lightning.yaml") == {"lightning": {}}
    return folder / "configs" / "NOW-project.yaml"


@pytest.mark.parametrize(
    "write, owner, name",
    [
        (_write_image_logger, Image.Image, "save"),
        (_write_toyworld_grid, Image.Image, "save"),
        (_write_setup_configs, OmegaConf, "save"),
    ],
)
def test_other_writers_are_atomic_with_umask_permissions(tmp_path, monkeypatch, write, owner, name):
    old = os.umask(0o022)
    try:
        path = write(tmp_path / "ok")
    finally:
        os.umask(old)
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o644
    _fill_disk_in(monkeypatch, owner, name)
    with pytest.raises(OutputError, match="no space left on device while writing"):
        write(tmp_path / "full")
    assert files_under(tmp_path / "full") == []  # no 0-byte or partial file


@pytest.mark.parametrize("write", [_write_image_logger, _write_setup_configs])
def test_a_rerun_never_replaces_the_run_folders_records(tmp_path, write):
    """The same configs name (two starts of a run in one second) or the same logged step (a resumed run) again: the
    earlier file stays, the new one is numbered."""
    path = write(tmp_path)
    before = path.read_bytes()
    write(tmp_path)
    assert path.read_bytes() == before
    numbered = path.with_name(f"{path.stem}-0001{path.suffix}")
    assert numbered.is_file() and numbered.read_bytes()
