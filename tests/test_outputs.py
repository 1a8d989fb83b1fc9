"""ldm/outputs.py: prompt -> file name, paths kept inside the output folder, numbering, atomic writes (umask
permissions, a full disk named and leaving nothing behind), exclusive run folders."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from ldm import outputs
from ldm.outputs import OutputError, RunFolder, atomic_write, claim_folder, inside, next_index, safe_stem

NASTY = [
    "../x", "/abs/path/x", "a/b\\c", "..", ".", "...hidden", "", "   ", "\x00\x01\x1f", "a\x00b\tc\nd", "\u202eevil",
    "C:\\Windows\\system32", "con:aux*?<>|\"", "~/x", "./../../etc/passwd", "-.-", "\u00e9t\u00e9 \u732b", "x" * 500,
    "a" + "/" * 300 + "b", ". /.",
]  # fmt: skip


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- safe_stem


@pytest.mark.parametrize("text", NASTY)
def test_safe_stem_is_one_plain_visible_name(text):
    stem = safe_stem(text, max_len=40)
    assert stem and len(stem) <= 40
    assert "/" not in stem and "\\" not in stem and os.sep not in stem
    assert not stem.startswith(".") and not stem.startswith("-")
    assert stem not in (".", "..")
    assert all(unicodedata.category(ch)[0] != "C" for ch in stem)  # no control / format characters
    assert Path(stem).name == stem and len(Path(stem).parts) == 1


def test_safe_stem_examples():
    assert safe_stem("a painting of a cat") == "a-painting-of-a-cat"  # the original's dashes
    assert safe_stem("../x") == "x"
    assert safe_stem("/abs/path/x") == "abs-path-x"
    assert safe_stem("a cat/dog") == "a-cat-dog"
    assert safe_stem("...hidden") == "hidden"
    assert safe_stem("a\x00b\x07c") == "abc"  # control characters are dropped
    assert safe_stem("x" * 500) == "x" * 100 and len(safe_stem("y" * 50, max_len=8)) == 8
    for empty in ("", "  ", "..", "/", "\x00", "-.-"):
        assert safe_stem(empty) == "prompt"
    assert safe_stem("", fallback="grid") == "grid"


# ---------------------------------------------------------------- inside


def test_inside_refuses_paths_that_leave_the_folder(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "a/b.png") == root / "a" / "b.png"
    assert inside(root, root / "c.png") == root / "c.png"
    for bad in ("../x.png", tmp_path / "x.png", "/etc/passwd", "a/../../x.png"):
        with pytest.raises(OutputError, match="outside the output folder"):
            inside(root, bad)
    (root / "link").symlink_to(tmp_path)  # a link inside that points out is outside too
    with pytest.raises(OutputError, match="outside the output folder"):
        inside(root, "link/x.png")


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_write_gives_umask_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = outputs.save_text("hello\n", tmp_path / "a.txt")
        reference = tmp_path / "plain.txt"
        reference.write_text("x")  # what a plain open() gives under this umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask == stat.S_IMODE(reference.stat().st_mode)
    assert path.read_text() == "hello\n"


def _partial_then_enospc(tmp: str) -> None:
    Path(tmp).write_bytes(b"half a fi")  # some bytes reach the disk, then it is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_named_and_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "settings-0000.json"
    with pytest.raises(OutputError, match="no space left on device") as info:
        atomic_write(target, _partial_then_enospc)
    assert str(target) in str(info.value) and info.value.errno == errno.ENOSPC
    assert files_under(tmp_path / "out") == []  # no 0-byte, partial or temporary file


def test_full_disk_keeps_the_previous_file(tmp_path):
    target = tmp_path / "grid.png"
    target.write_bytes(b"the earlier grid")
    with pytest.raises(OutputError, match=f"no space left on device while writing {target}"):
        atomic_write(target, _partial_then_enospc)
    assert target.read_bytes() == b"the earlier grid" and files_under(tmp_path) == ["grid.png"]


def test_full_disk_in_pil_save(tmp_path, monkeypatch):
    """The PNG writer itself runs out of space (PIL raises from inside ``Image.save``)."""
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # the file is complete on disk ...
        Path(fp).write_bytes(Path(fp).read_bytes()[:10])  # ... then truncated, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    path = tmp_path / "samples" / "00000.png"
    with pytest.raises(OutputError, match=f"no space left on device while writing {path}"):
        outputs.save_image(Image.new("RGB", (8, 8)), path, root=tmp_path)
    assert files_under(tmp_path) == ["samples"]


def test_other_write_errors_propagate_and_clean_up(tmp_path):
    def boom(tmp: str) -> None:
        Path(tmp).write_text("x")
        raise ValueError("not an OSError")

    with pytest.raises(ValueError, match="not an OSError"):
        atomic_write(tmp_path / "a.json", boom)
    assert files_under(tmp_path) == []


def test_atomic_write_refuses_a_path_outside_root(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="outside the output folder"):
        outputs.save_json({"a": 1}, tmp_path / "out" / ".." / "x.json", root=tmp_path / "out")
    assert not (tmp_path / "x.json").exists()
    assert json.loads(outputs.save_json({"a": 1}, "s.json", root=tmp_path / "out").read_text()) == {"a": 1}


# ---------------------------------------------------------------- numbering and run folders


def test_next_index_follows_the_largest_number(tmp_path):
    assert next_index(tmp_path / "missing") == 0
    for name in ("00000.png", "00003.png", "notes.txt", "00007.jpg", "grid-0002.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_index(tmp_path) == 4  # 3 + 1, not the count of files; other suffixes ignored
    assert next_index(tmp_path, "grid-", ".png") == 3
    assert next_index(tmp_path, "settings-", ".json") == 0


def test_run_folder_numbers_grids_and_settings(tmp_path):
    first = RunFolder(tmp_path, "sd")
    assert first.settings_path().name == "settings-0000.json" and first.grid_path("a/b").name == "a-b-0000.png"
    first.save_json({}, first.settings_path())
    first.save_image(Image.new("RGB", (2, 2)), first.grid_path("a/b"))
    second = RunFolder(tmp_path, "sd")
    assert second.settings_path().name == "settings-0001.json" and second.grid_path("a/b").name == "a-b-0001.png"
    ldm = RunFolder(tmp_path / "ldm", "ldm")
    assert ldm.grid_path("../x").name == "x.png"
    ldm.save_image(Image.new("RGB", (2, 2)), ldm.grid_path("../x"))
    assert ldm.grid_path("../x").name == "x-0000.png"  # the LDM layout's <stem>.png is taken: numbered
    assert ldm.sample_path(3).name == "0003.png" and first.sample_path(3).name == "00003.png"


def test_claim_folder_picks_a_new_name_on_collision(tmp_path):
    name = tmp_path / "logs" / "2024-01-01T00-00-00_cat"
    assert claim_folder(name) == name
    assert claim_folder(name) == name.with_name(name.name + "_1")
    (name.parent / (name.name + "_2")).write_text("a file, not a folder")
    assert claim_folder(name) == name.with_name(name.name + "_3")
    assert sorted(p.name for p in name.parent.iterdir()) == [name.name + s for s in ("", "_1", "_2", "_3")]


def test_claim_folder_gives_each_concurrent_run_its_own(tmp_path):
    name, n = tmp_path / "run", 8
    barrier, claimed = threading.Barrier(n), []

    def claim() -> None:
        barrier.wait()  # all start together: the same name at the same moment
        claimed.append(claim_folder(name))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == n and all(p.is_dir() for p in claimed)
