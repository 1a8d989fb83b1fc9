"""How every script ends: a user error is one ``error: ...`` line, a bug keeps its traceback.

Every script's ``if __name__ == "__main__":`` (and ``main.py``'s) is ``run_cli(main)``:

- a user error (see :func:`is_user_error`) prints ``error: <message>`` on stderr and exits with status 2
  (argparse's status for a bad command line); a :class:`ldm.errors.RunError` (another process of the run died or
  went silent) prints its one line too, with status 1;
- ``--debug`` on the command line (taken out before ``main`` sees it) or ``LDM_DEBUG=1`` in the environment prints
  the traceback first;
- any other exception is a bug: Python prints its traceback and the status is 1;
- ``main``'s return value is the exit status when it is an ``int`` (``None``: 0).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ldm.errors import RunError, UserError

__all__ = ["USER_ERROR_STATUS", "RUN_ERROR_STATUS", "DEBUG_ENV", "is_user_error", "run_cli", "split_debug_flag"]

USER_ERROR_STATUS = 2
RUN_ERROR_STATUS = 1
DEBUG_ENV = "LDM_DEBUG"
_REPO = Path(__file__).resolve().parents[1]
_PROJECT_SOURCES = (_REPO / "ldm", _REPO / "scripts", _REPO / "main.py")
_TRUE = ("1", "true", "yes", "on", "y", "t")
_BOOL_WORDS = (*_TRUE, "0", "false", "no", "off", "n", "f")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """:class:`UserError` and the project's other error types whose messages are meant for the user."""
    types: list[type[BaseException]] = [UserError, RunError]
    for module, name in (
        ("ldm.outputs", "OutputError"),  # full disk, a path outside the output folder
        ("ldm.modules.embedding_interop", "EmbeddingFileError"),
        ("ldm.data.image_io", "ImageFolderError"),
        ("ldm.util", "CheckpointError"),
        ("ldm.util", "ConfigError"),
    ):
        loaded = sys.modules.get(module)  # only modules the run imported can have raised their errors
        cls = getattr(loaded, name, None) if loaded is not None else None
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def _raised_by_project(err: BaseException) -> bool:
    """Whether the innermost frame that raised ``err`` is this project's code (``ldm/``, ``scripts/``, main.py)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(path == src or src in path.parents for src in _PROJECT_SOURCES)


def is_user_error(err: BaseException) -> bool:
    """A user error: a :class:`UserError` or another of the project's user-facing error types, or a
    ``ValueError``/``FileNotFoundError`` that the project's own code raised with its message (its checks of flags
    and files). A ``ValueError`` from inside torch, numpy or another library is a bug, not a user error."""
    if isinstance(err, _user_error_types()):
        return True
    return isinstance(err, ValueError | FileNotFoundError | NotADirectoryError) and _raised_by_project(err)


def split_debug_flag(argv: Sequence[str], flags: Sequence[str] = ("--debug",)) -> tuple[list[str], bool]:
    """``argv`` without the debug flag (``--debug``, ``--debug=1``, ``--debug true``), and whether it was on."""
    rest: list[str] = []
    debug = False
    args = list(argv)
    k = 0
    while k < len(args):
        arg = args[k]
        name, eq, value = arg.partition("=")
        if name in flags:
            if eq:
                debug = value.lower() in _TRUE
            elif k + 1 < len(args) and args[k + 1].lower() in _BOOL_WORDS:
                k += 1
                debug = args[k].lower() in _TRUE
            else:
                debug = True
        else:
            rest.append(arg)
        k += 1
    return rest, debug


def _message(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text} ({err.filename})"
    return text or type(err).__name__


def run_cli(
    main: Callable[[list[str] | None], Any],
    argv: Sequence[str] | None = None,
    debug_flags: Sequence[str] = ("--debug",),
    keep_debug_flag: bool = False,
) -> NoReturn:
    """Run ``main(argv)`` and exit: status 0 (or ``main``'s int), 2 with one ``error:`` line for a user error.

    Args:
        main: the script's ``main(argv)``.
        argv: the arguments (default ``sys.argv[1:]``).
        debug_flags: the flags that turn on tracebacks for user errors.
        keep_debug_flag: pass the debug flag on to ``main`` (for a parser that declares it, like main.py's).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    rest, debug = split_debug_flag(args, debug_flags)
    debug = debug or os.environ.get(DEBUG_ENV, "").strip().lower() in _TRUE
    try:
        result = main(args if keep_debug_flag else rest)
    except Exception as err:  # noqa: BLE001 - sorted into user errors and bugs below
        if not is_user_error(err):
            raise
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {_message(err)}\n")
        sys.exit(RUN_ERROR_STATUS if isinstance(err, RunError) else USER_ERROR_STATUS)
    sys.exit(result if isinstance(result, int) else 0)
