"""Files of the output folders: names from prompts, paths kept inside, atomic and exclusive writes, numbering.

See :mod:`ldm.outputs` for what each function guarantees.
"""

from __future__ import annotations

import errno
import filecmp
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
    "OutputError", "safe_stem", "inside", "file_mode", "write_error", "atomic_write", "image_writer", "text_writer",
    "json_text", "save_image", "save_text", "save_json", "claim_numbered", "save_record", "record_number",
    "ensure_folder",
    "next_index", "claim_folder",
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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# A full disk reported by a writer with its own error type (safetensors: "Error while serializing: I/O error: No space
# left on device (os error 28)"); 122 is EDQUOT.
_NO_SPACE_TEXT = re.compile(r"os error (28|122)\b|no space left on device|disk quota exceeded|StorageFull", re.I)
_REASONS = {
    errno.EROFS: "the file system is read-only; choose an output folder on another one",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


def write_error(err: BaseException, path: str | os.PathLike) -> OutputError | None:
    """The one-line :class:`OutputError` for a failed write of ``path``, or None when ``err`` is not about the file
    system (a bug then keeps its traceback).

    A full disk (``ENOSPC``/``EDQUOT``, or another error type whose message says so, as safetensors' does) becomes
    "no space left on device while writing <path>"; a read-only file system, a missing permission, a path through a
    file and the other ``OSError`` codes become "cannot write <path>: <reason>".
    """
    if isinstance(err, OutputError):
        return err
    code = err.errno if isinstance(err, OSError) else None
    if code in _NO_SPACE or (code is None and _NO_SPACE_TEXT.search(str(err))):
        return OutputError(errno.ENOSPC, f"no space left on device while writing {path}")
    if isinstance(err, OSError) and code is not None and not isinstance(err, FileExistsError):
        reason = _REASONS.get(code, err.strerror or os.strerror(code))
        return OutputError(code, f"cannot write {path}: {reason}")
    return None


def _link_into_place(tmp: str, path: Path) -> None:
    """Put the finished ``tmp`` at ``path`` unless ``path`` exists (:class:`FileExistsError` then)."""
    try:
        os.link(tmp, path)  # atomic, and fails when the name is taken
    except FileExistsError:
        raise
    except OSError as err:  # a file system without hard links: claim the name with O_EXCL, then move onto it
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode()))
        try:
            os.replace(tmp, path)
        except BaseException:
            os.remove(path)  # the empty placeholder this call created
            raise
        return
    os.remove(tmp)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], None],
    root: str | os.PathLike | None = None,
    exclusive: bool = False,
) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it onto ``path``.

    The temporary name keeps the suffix (writers that pick a format from it still work). With ``root``, ``path`` must
    resolve inside it. The file gets the umask's permissions, not ``mkstemp``'s ``0o600``. ``exclusive``: an existing
    ``path`` is never replaced; :class:`FileExistsError` says the name is taken (nothing is written). On any failure
    nothing is left behind; a failed write is an :class:`OutputError` naming the path (:func:`write_error`).
    """
    path = Path(path)
    if root is not None:
        path = inside(root, path)
    tmp: str | None = None
    try:
        if exclusive and path.exists():
            raise FileExistsError(errno.EEXIST, "the name is taken", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:40]}-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, file_mode())
        if exclusive:
            _link_into_place(tmp, path)
        else:
            os.replace(tmp, path)
        tmp = None
    except Exception as err:
        converted = write_error(err, path)
        if converted is None or converted is err:
            raise
        raise converted from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def image_writer(image: Image.Image, path: str | os.PathLike) -> Callable[[str], None]:
    """``write(tmp)`` saving a PIL image in the format of ``path``'s suffix."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    return lambda tmp: image.save(tmp, format=fmt)


def text_writer(text: str) -> Callable[[str], None]:
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def json_text(data: Any, indent: int = 1) -> str:
    """``data`` as JSON text (non-JSON values through ``str``), with a final newline."""
    return json.dumps(data, indent=indent, default=str) + "\n"


def save_image(
    image: Image.Image, path: str | os.PathLike, root: str | os.PathLike | None = None, exclusive: bool = False
) -> Path:
    """Write a PIL image atomically (format from the suffix)."""
    return atomic_write(path, image_writer(image, path), root, exclusive)


def save_text(
    text: str, path: str | os.PathLike, root: str | os.PathLike | None = None, exclusive: bool = False
) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, text_writer(text), root, exclusive)


def save_json(
    data: Any, path: str | os.PathLike, root: str | os.PathLike | None = None, exclusive: bool = False
) -> Path:
    """Write JSON atomically (non-JSON values through ``str``)."""
    return save_text(json_text(data), path, root, exclusive)


MAX_CLAIMS = 100_000


def claim_numbered(
    name_of: Callable[[int], Path],
    write: Callable[[str], None],
    start: int = 0,
    root: str | os.PathLike | None = None,
) -> tuple[Path, int]:
    """Write ``write``'s file under ``name_of(n)`` for the first ``n >= start`` whose name is free; returns the path
    and ``n``. Every attempt is an exclusive :func:`atomic_write`, so concurrent runs never get the same name."""
    for n in range(start, start + MAX_CLAIMS):
        try:
            return atomic_write(name_of(n), write, root, exclusive=True), n
        except FileExistsError:
            continue
    raise OutputError(f"{name_of(start)} .. {name_of(start + MAX_CLAIMS - 1).name} are all taken; use another folder")


def save_record(
    write: Callable[[str], None],
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    number: int = 0,
    keep_same: bool = False,
) -> Path:
    """A record under its fixed name ``path`` (``clip_similarity.json``) when that is free, else as
    ``<stem>-NNNN<suffix>`` (the first free ``NNNN`` from the folder's next): never replaces an earlier record.
    ``number`` (>= 1): go straight to ``-NNNN`` from that number (the companions of a record numbered so).
    ``keep_same``: when ``path`` holds exactly these bytes already, nothing is written (a resumed run's unchanged
    grid). Returns the path of the record."""
    path = Path(path)
    if not number:
        try:
            return atomic_write(path, write, root, exclusive=True)
        except FileExistsError:
            if keep_same and _same_content(path, write):
                return path
    start = number or max(1, next_index(path.parent, f"{path.stem}-", path.suffix))
    written, _ = claim_numbered(lambda n: path.with_name(f"{path.stem}-{n:04d}{path.suffix}"), write, start, root)
    logger.info("%s exists (an earlier run's); this run's record is %s", path, written.name)
    return written


def record_number(written: str | os.PathLike, path: str | os.PathLike) -> int:
    """The ``NNNN`` :func:`save_record` gave the record of ``path`` it wrote as ``written`` (0: the fixed name), to
    number its companions alike (``save_record(..., number=...)``)."""
    written, path = Path(written), Path(path)
    return 0 if written.stem == path.stem else int(written.stem[len(path.stem) + 1 :])


def _same_content(path: Path, write: Callable[[str], None]) -> bool:
    """Whether ``write`` would produce exactly the bytes of ``path`` (written to a temporary file, then removed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:40]}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        return filecmp.cmp(tmp, path, shallow=False)
    except Exception as err:
        converted = write_error(err, path)
        if converted is None:
            raise
        raise converted from err
    finally:
        os.remove(tmp)


def ensure_folder(path: str | os.PathLike, flag: str = "--outdir") -> Path:
    """Create the output folder ``path`` (and its parents); one :class:`OutputError` naming ``flag`` when a file is
    in the way or the folder cannot be written (a read-only file system, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise OutputError(errno.EEXIST, f"{flag} {path}: it is a file, not a folder; choose a folder") from err
    except OSError as err:
        reason = _REASONS.get(err.errno, err.strerror) if err.errno is not None else str(err)
        raise OutputError(err.errno, f"{flag} {path}: cannot create the output folder ({reason})") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"{flag} {path}: cannot write into the folder (read-only file system or no "
                          "permission); choose another output folder")  # fmt: skip
    return path


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
