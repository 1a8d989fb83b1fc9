"""An exclusive lock around a read-modify-write of a record that several runs share (``flock``)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ldm.outputs.files import OutputError, file_mode

__all__ = ["locked"]


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) while the block runs; other processes
    taking the same lock wait. ``flock`` where the platform has it, else an ``O_EXCL`` lock file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): a lock file that exists while the lock is held
        with _lock_file(path.with_name(path.name + ".held")):
            yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _lock_file(path: Path, timeout_s: float = 60.0) -> Iterator[None]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise OutputError(f"{path} has been locked for {timeout_s:.0f} s; if no run uses the folder, delete "
                                  "the lock file") from None  # fmt: skip
            time.sleep(0.05)
    try:
        yield
    finally:
        os.remove(path)
