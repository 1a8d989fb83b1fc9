"""ldm/outputs: prompt -> file name, paths kept inside the output folder, numbering, atomic writes (umask
permissions, a full disk named and leaving nothing behind), exclusive names and run folders (also between
processes), records a rerun never replaces."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
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
    assert first.save_settings({"run": 1}).name == "settings-0000.json"
    assert first.save_grid(Image.new("RGB", (2, 2)), "a/b").name == "a-b-0000.png"
    second = RunFolder(tmp_path, "sd")
    assert second.settings_path().name == "settings-0001.json" and second.grid_path("a/b").name == "a-b-0001.png"
    # Both were created before either wrote: the second claims the next free numbers, the first keeps its own.
    late = RunFolder(tmp_path, "sd")
    assert second.save_settings({"run": 2}).name == "settings-0001.json"
    assert late.save_settings({"run": 3}).name == "settings-0002.json"
    assert json.loads((tmp_path / "settings-0000.json").read_text()) == {"run": 1}
    ldm = RunFolder(tmp_path / "ldm", "ldm")
    assert ldm.grid_path("../x").name == "x.png"
    assert ldm.save_grid(Image.new("RGB", (2, 2)), "../x").name == "x.png"
    assert ldm.grid_path("../x").name == "x-0000.png"  # the LDM layout's <stem>.png is taken: numbered
    assert ldm.save_grid(Image.new("RGB", (2, 2)), "../x").name == "x-0000.png"
    assert ldm.sample_path(3).name == "0003.png" and first.sample_path(3).name == "00003.png"


def test_samples_skip_taken_numbers_and_attention_pictures(tmp_path):
    folder = RunFolder(tmp_path, "sd")
    folder.prepare()
    (folder.samples / "00001.png").write_bytes(b"another run's")
    folder.attention.mkdir()
    (folder.attention / "00002.png").write_bytes(b"an orphaned attention picture")
    image = Image.new("RGB", (2, 2), (255, 0, 0))
    got = [folder.save_sample(image, 0, with_attention=True) for _ in range(3)]
    assert got == [0, 3, 4]  # 1: a sample of another run, 2: its attention picture is taken
    assert (folder.samples / "00001.png").read_bytes() == b"another run's"
    assert (folder.attention / "00002.png").read_bytes() == b"an orphaned attention picture"
    assert folder.save_attention(image, 3) == 3 and folder.save_attention(image, 3) == 4  # never replaced


# ---------------------------------------------------------------- exclusive names, records, concurrent runs


def test_exclusive_write_never_replaces(tmp_path):
    target = tmp_path / "settings-0000.json"
    target.write_text("the earlier record")
    with pytest.raises(FileExistsError):
        outputs.save_json({"a": 1}, target, exclusive=True)
    assert target.read_text() == "the earlier record" and files_under(tmp_path) == ["settings-0000.json"]
    fresh = outputs.save_json({"a": 1}, tmp_path / "new.json", exclusive=True)
    assert json.loads(fresh.read_text()) == {"a": 1} and files_under(tmp_path) == ["new.json", "settings-0000.json"]


def test_save_record_numbers_a_rerun(tmp_path):
    path = tmp_path / "clip_similarity.json"
    first = outputs.save_record(outputs.text_writer("run 1\n"), path)
    second = outputs.save_record(outputs.text_writer("run 2\n"), path)
    third = outputs.save_record(outputs.text_writer("run 3\n"), path)
    assert (first.name, second.name, third.name) == (
        "clip_similarity.json", "clip_similarity-0001.json", "clip_similarity-0002.json"
    )  # fmt: skip
    assert [p.read_text() for p in (first, second, third)] == ["run 1\n", "run 2\n", "run 3\n"]
    assert outputs.save_record(outputs.text_writer("x"), tmp_path / "m.md", number=2).name == "m-0002.md"
    grid = tmp_path / "grid.png"
    outputs.save_record(outputs.image_writer(Image.new("RGB", (2, 2)), grid), grid)
    same = outputs.save_record(outputs.image_writer(Image.new("RGB", (2, 2)), grid), grid, keep_same=True)
    other = outputs.save_record(outputs.image_writer(Image.new("RGB", (3, 2)), grid), grid, keep_same=True)
    assert same == grid and other.name == "grid-0001.png"  # identical bytes: nothing new; other bytes: numbered
    assert sorted(p.name for p in tmp_path.glob("grid*")) == ["grid-0001.png", "grid.png"]


CLAIMER = """
import sys, time
from pathlib import Path
from PIL import Image
from ldm.outputs import RunFolder
root, writer, start_at, n = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
folder = RunFolder(root, "sd")  # as run_txt2img: the numbers to start from are read once, before sampling
folder.prepare()
number = folder.next_sample_index()
image = Image.new("RGB", (2, 2), (writer, 0, 0))
while time.time() < start_at:  # every process starts claiming at the same moment
    time.sleep(0.001)
got = []
for _ in range(n):
    number = folder.save_sample(image, number)
    got.append(number)
    number += 1
print(folder.save_settings({"writer": writer, "samples": got}).name, *got)
"""


def test_concurrent_processes_never_share_a_number(tmp_path):
    """Four processes claim samples and a settings record in one folder at the same moment: every file is written
    once, by one of them, and each process's record lists exactly its own samples."""
    n_proc, n = 4, 15
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(tmp_path), str(w), str(start_at), str(n)],
            env=env,
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for w in range(n_proc)
    ]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claimed = {int(k): w for w, out in enumerate(outs) for k in out[1:]}
    assert len(claimed) == n_proc * n  # no number handed to two processes
    samples = sorted((tmp_path / "samples").iterdir())
    assert [p.name for p in samples] == [f"{k:05d}.png" for k in range(n_proc * n)]  # none lost, no temporary file
    for k, w in claimed.items():  # each file holds the pixels of the process that claimed its number
        assert Image.open(tmp_path / "samples" / f"{k:05d}.png").getpixel((0, 0)) == (w, 0, 0)
    records = {json.loads((tmp_path / out[0]).read_text())["writer"]: out for out in outs}
    assert sorted(p.name for p in tmp_path.glob("settings-*.json")) == [f"settings-{k:04d}.json" for k in range(4)]
    assert all(json.loads((tmp_path / out[0]).read_text())["samples"] == [int(k) for k in out[1:]]
               for out in records.values())  # fmt: skip


def test_write_errors_are_one_line_naming_the_path(tmp_path):
    from safetensors import SafetensorError

    path = tmp_path / "e.safetensors"
    # safetensors reports a full disk through its own error type (its message, as safetensors 0.8 words it)
    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    err = outputs.write_error(full, path)
    assert err.errno == errno.ENOSPC and str(err) == f"[Errno 28] no space left on device while writing {path}"
    read_only = outputs.write_error(OSError(errno.EROFS, "Read-only file system"), path)
    assert "cannot write" in str(read_only) and "read-only" in str(read_only)
    assert outputs.write_error(ValueError("a bug"), path) is None  # not about the disk: keeps its traceback

    def safetensors_full_disk(tmp: str) -> None:
        Path(tmp).write_bytes(b"part")
        raise full

    with pytest.raises(OutputError, match="no space left on device while writing"):
        atomic_write(path, safetensors_full_disk)
    assert files_under(tmp_path) == []  # no partial or temporary file


def test_ensure_folder_names_the_flag(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match=r"--outdir .*a-file: it is a file, not a folder"):
        outputs.ensure_folder(tmp_path / "a-file", "--outdir")
    with pytest.raises(OutputError, match=r"--out_dir .*a-file/sub: cannot create the output folder \(a part of"):
        outputs.ensure_folder(tmp_path / "a-file" / "sub", "--out_dir")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a read-only mount answers
    with pytest.raises(OutputError, match="cannot write into the folder .read-only file system or no permission"):
        outputs.ensure_folder(tmp_path / "ro", "--outdir")


def test_lock_serializes_read_modify_write(tmp_path):
    counter = tmp_path / "count.txt"
    counter.write_text("0")

    def bump() -> None:
        for _ in range(20):
            with outputs.locked(tmp_path / "count.lock"):
                value = int(counter.read_text())
                time.sleep(0.0005)
                counter.write_text(str(value + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "80"  # no lost update


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


def test_exclusive_write_without_hard_links(tmp_path, monkeypatch):
    """On a file system without hard links (FAT, some network mounts) the name is claimed with O_EXCL instead."""

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = outputs.save_json({"run": 1}, tmp_path / "r.json", exclusive=True)
    with pytest.raises(FileExistsError):
        outputs.save_json({"run": 2}, tmp_path / "r.json", exclusive=True)
    assert json.loads(first.read_text()) == {"run": 1} and files_under(tmp_path) == ["r.json"]
    path, number = outputs.claim_numbered(lambda n: tmp_path / f"s-{n}.txt", outputs.text_writer("x"), 0)
    assert (path.name, number) == ("s-0.txt", 0)
    assert outputs.claim_numbered(lambda n: tmp_path / f"s-{n}.txt", outputs.text_writer("y"), 0)[1] == 1
