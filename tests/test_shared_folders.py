"""Nothing lost when runs share a folder (issue 20): two sampling processes into one --outdir keep every image and
both records; a prompt's engine folder never moves when prompts are added; the engine's output-folder errors are
one line."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture

from ldm.cli import run_cli

SD_CONFIG = REPO / "configs/tests/golden_tiny_sd.yaml"
TINY = ["--H", "32", "--W", "32", "--f", "2", "--ddim_steps", "2", "--precision", "full"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"shared_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sd_argv(out: Path, *extra: str) -> list[str]:
    return ["--config", str(SD_CONFIG), "--ckpt", str(GOLDEN_WEIGHTS["sd"]), "--outdir", str(out), *TINY, *extra]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_sampling_processes_into_one_folder_keep_everything(tmp_path):
    """Two scripts/stable_txt2img.py processes started together into one --outdir, other seeds: all 6 samples, both
    grids and both settings records, each record listing its own 3 samples."""
    require_fixture(GOLDEN_WEIGHTS["sd"])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "scripts" / "stable_txt2img.py"),
                *sd_argv(out),
                "--prompt",
                "a cat",
                "--n_samples",
                "1",
                "--n_iter",
                "3",
                "--seed",
                str(seed),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    samples = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in samples] == [f"{k:05d}.png" for k in range(6)]
    records = [json.loads(p.read_text()) for p in sorted(out.glob("settings-*.json"))]
    assert len(records) == 2 and sorted(r["options"]["seed"] for r in records) == [1, 2]
    assert sorted(k for r in records for k in r["samples"]) == list(range(6))  # each sample in one record
    assert all(len(r["samples"]) == 3 for r in records)
    assert sorted(r["grid"] for r in records) == ["a-cat-0000.png", "a-cat-0001.png"]
    assert len({p.read_bytes() for p in samples}) == 6  # six different images: nothing written twice


# ---------------------------------------------------------------- the engine (--from-file)


def engine_argv(prompts: Path, out: Path) -> list[str]:
    return [*sd_argv(out), "--from-file", str(prompts), "--n_samples", "1", "--n_iter", "1"]


def test_a_prompts_folder_never_moves_when_prompts_are_added(tmp_path):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    script = load_script("stable_txt2img")
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    prompts.write_text("a red circle\n")
    script.main(engine_argv(prompts, out))
    old = out / "plain" / "a-red-circle" / "00000.png"
    before = (old.read_bytes(), old.stat().st_mtime_ns)
    grid = (out / "plain" / "a-red-circle.png").read_bytes()
    prompts.write_text("a red/circle\na red circle\n")  # the newcomer comes first and its name collides
    script.main(engine_argv(prompts, out))
    assert (old.read_bytes(), old.stat().st_mtime_ns) == before  # not sampled again, not moved
    folders = json.loads((out / ".engine" / "folders.json").read_text())["folders"]
    assert folders["a red circle"] == "a-red-circle" and folders["a red/circle"].startswith("a-red-circle-")
    assert sorted(p.name for p in (out / "plain").iterdir() if p.is_dir()) == sorted(folders.values())
    assert (out / "plain" / f"{folders['a red/circle']}" / "00000.png").is_file()
    assert (out / "plain" / "a-red-circle.png").read_bytes() == grid  # same images, same grid: kept, not renumbered
    assert not list((out / "plain").glob("a-red-circle-0*.png"))
    record = json.loads((out / "settings-0001.json").read_text())
    assert record["engine"]["folders"]["a red circle"] == "plain/a-red-circle"


def _one_error_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_engine_outdir_errors_are_one_line(tmp_path, capsys, monkeypatch):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    script = load_script("stable_txt2img")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    line = _one_error_line(capsys, script.main, engine_argv(prompts, a_file))
    assert line == f"error: [Errno 17] --outdir {a_file}: it is a file, not a folder; choose a folder"
    assert a_file.read_text() == "not a folder"
    line = _one_error_line(capsys, script.main, engine_argv(prompts, a_file / "sub"))
    assert f"--outdir {a_file / 'sub'}: cannot create the output folder (a part of the path is a file" in line

    # A read-only file system: every write fails with EROFS (mkstemp is where a new file is created).
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "ro"
    line = _one_error_line(capsys, script.main, engine_argv(prompts, out))
    assert "cannot write" in line and ".engine" in line and "read-only" in line
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # how a read-only mount answers
    line = _one_error_line(capsys, script.main, engine_argv(prompts, out))
    assert line.endswith(f"--outdir {out}: cannot write into the folder (read-only file system or no permission); "
                         "choose another output folder")  # fmt: skip


def test_engine_keeps_an_image_another_run_made_meanwhile(tmp_path, caplog, monkeypatch):
    """Two engine runs into one folder (same settings) both list an image as missing; the one that writes second
    finds it made by the other and keeps it (exclusive write), instead of replacing it."""
    from ldm.engine import runner

    require_fixture(GOLDEN_WEIGHTS["sd"])
    script = load_script("stable_txt2img")
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    prompts.write_text("a cat\n")
    real_save = runner.save_image

    def other_run_first(image, path, root=None, exclusive=False):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"made by the other run")  # between this run's plan and its write
        return real_save(image, path, root, exclusive)

    monkeypatch.setattr(runner, "save_image", other_run_first)
    with caplog.at_level("INFO", logger="ldm.engine.runner"):
        script.main([*engine_argv(prompts, out), "--skip_grid"])
    image = out / "plain" / "a-cat" / "00000.png"
    assert image.read_bytes() == b"made by the other run"  # never replaced
    assert "was made by another run meanwhile; it stays" in caplog.text
    assert not [p for p in image.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
