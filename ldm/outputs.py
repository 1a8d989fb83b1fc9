"""The one place that writes outputs: file names from prompts, numbering, atomic writes, and paths kept inside the
output folder. Used by the txt2img scripts, the evaluation scripts, the distributed sampling engine, the explorer and
the embedding writer.

- :func:`safe_stem`: a prompt (any text) -> a file-name stem: no path separators, no leading dots, no control
  characters, at most ``max_len`` characters, a fallback for an empty result.
- :func:`inside`: the path, after checking that it resolves inside the output folder.
- :func:`atomic_write`: write to a temporary file beside the target, then rename; the file gets the usual permissions
  (``0o666`` less the umask); a full disk raises :class:`OSError` saying "no space left on device" and naming the path,
  and leaves nothing behind.
- :func:`save_image`, :func:`save_json`, :func:`save_text`: atomic writers for the usual outputs.
- :func:`claim_folder`: create a folder that no other run uses (``<name>``, else ``<name>_1``, ``<name>_2``, ...).
- :func:`next_index`: the next free number for files named ``<prefix><number><suffix>`` in a folder, so a rerun into
  the same folder keeps earlier records (samples, grids, ``settings-0001.json``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "OutputError", "safe_stem", "inside", "atomic_write", "save_image", "save_json", "save_text", "next_index",
    "file_mode", "claim_folder", "RunFolder",
]  # fmt: skip

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[\\/:*?\"<>|\s]+")  # separators, Windows-reserved characters and whitespace -> "-"


class OutputError(OSError):
    """An output could not be written (full disk, a path outside the output folder); the message names the path."""


def safe_stem(text: str, max_len: int = 100, fallback: str = "prompt") -> str:
    """A file-name stem derived from ``text`` (a prompt): never a path, never hidden, never empty.

    Control characters are dropped, separators and whitespace become ``-``, runs of ``-`` and ``.`` collapse, leading
    and trailing ``-``/``.`` are stripped (so ``../x`` -> ``x``), the result is cut to ``max_len`` characters; an empty
    result gives ``fallback``.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")  # control, format, unassigned
    text = _UNSAFE.sub("-", text)
    text = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", text))
    text = text.strip("-.")[:max_len].strip("-.")
    return text or fallback


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` (relative paths are taken under ``root``) after checking it resolves inside ``root``."""
    root_r = Path(root).resolve()
    target = Path(path) if Path(path).is_absolute() else Path(root) / path
    target_r = target.resolve()
    if target_r != root_r and root_r not in target_r.parents:
        raise OutputError(f"refusing to write {target}: it is outside the output folder {root}")
    return target


def file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give a new file: ``0o666`` less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], root: str | os.PathLike | None = None) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it onto ``path``.

    The temporary name keeps the suffix (writers that pick a format from it still work). With ``root``, ``path`` must
    resolve inside it. The file gets the umask's permissions, not ``mkstemp``'s ``0o600``. On any failure nothing is
    left behind; a full disk becomes an :class:`OutputError` naming the path.
    """
    path = Path(path)
    if root is not None:
        path = inside(root, path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:40]}-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(errno.ENOSPC, f"no space left on device while writing {path}") from err
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_image(image: Image.Image, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write a PIL image atomically (format from the suffix)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt), root)


def save_text(text: str, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), root)


def save_json(data: Any, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write JSON atomically (non-JSON values through ``str``)."""
    return save_text(json.dumps(data, indent=1, default=str) + "\n", path, root)


def next_index(folder: str | os.PathLike, prefix: str = "", suffix: str = ".png") -> int:
    """One more than the largest ``N`` among files ``<prefix>N<suffix>`` in ``folder`` (0 when there are none).

    Numbering by the largest number, not by counting files, never reuses a number after a file was deleted.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return max(numbers, default=-1) + 1


MAX_FOLDER_SUFFIX = 1000


def claim_folder(path: str | os.PathLike, hint: str = "another name") -> Path:
    """Create the folder ``path`` exclusively and return it; when it exists, ``<name>_1``, ``<name>_2``, ...

    ``mkdir`` without ``exist_ok`` is atomic, so of two processes claiming the same name exactly one gets it and the
    other moves on to the next suffix: two runs started in the same second never share a folder. ``hint`` says in
    the error (every suffix taken) what to change.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(MAX_FOLDER_SUFFIX):
        candidate = path if k == 0 else path.with_name(f"{path.name}_{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot create the folder {candidate} ({err.strerror})") from err
        if k:
            logger.warning("Folder %s exists; using %s", path, candidate)
        return candidate
    raise OutputError(f"folders {path} and {path.name}_1 .. _{MAX_FOLDER_SUFFIX - 1} all exist; choose {hint}")


class RunFolder:
    """The output folder of one sampling run: ``samples/``, grids, ``attention/`` and ``settings-NNNN.json``.

    Every path it hands out is inside ``root``; every write is atomic. ``layout`` ``"sd"`` numbers samples with five
    digits and grids ``<stem>-NNNN.png``; ``"ldm"`` (the LDM script's original layout) uses four-digit samples and
    ``<stem>.png`` grids, with ``-NNNN`` added when that name is taken, so no run overwrites an earlier one.
    """

    def __init__(self, root: str | os.PathLike, layout: str = "sd") -> None:
        if layout not in ("sd", "ldm"):
            raise ValueError(f"unknown output layout {layout!r}; use 'sd' or 'ldm'")
        self.root = Path(root).absolute()  # relative paths handed out below are not re-joined to root
        self.layout = layout
        self.samples = self.root / "samples"
        self.attention = self.root / "attention"
        self._digits = 5 if layout == "sd" else 4
        self.run_index = next_index(self.root, "settings-", ".json")

    def prepare(self) -> None:
        try:
            self.samples.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"--outdir {self.root}: cannot create the output folder ({err.strerror})") from err

    def next_sample_index(self) -> int:
        return next_index(self.samples, "", ".png")

    def sample_path(self, index: int) -> Path:
        return inside(self.root, self.samples / f"{index:0{self._digits}d}.png")

    def attention_path(self, index: int) -> Path:
        return inside(self.root, self.attention / f"{index:0{self._digits}d}.png")

    def grid_path(self, prompt: str) -> Path:
        stem = safe_stem(prompt)
        if self.layout == "ldm" and not (self.root / f"{stem}.png").exists():
            return inside(self.root, f"{stem}.png")
        return inside(self.root, f"{stem}-{next_index(self.root, stem + '-', '.png'):04d}.png")

    def settings_path(self) -> Path:
        return inside(self.root, f"settings-{self.run_index:04d}.json")

    def save_image(self, image: Image.Image, path: Path) -> Path:
        return save_image(image, path, self.root)

    def save_json(self, data: Any, path: Path) -> Path:
        return save_json(data, path, self.root)
