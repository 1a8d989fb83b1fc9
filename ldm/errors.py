"""The project's user errors: a bad flag, file, config, token or prompt, reported by the scripts as one line.

:class:`UserError` marks a mistake the user can fix; its message names the flag, file or token and says how. The
command-line wrapper :func:`ldm.cli.run_cli` prints it as ``error: <message>`` (no traceback) and exits with
status 2; anything else is a bug and keeps its traceback.

:class:`RunError` marks a run that cannot go on for a reason outside this process (another process of the run died or
went silent); it is printed the same way, one line, with exit status 1.

``UserError`` is a ``ValueError`` and :class:`MissingFileError` also a ``FileNotFoundError``, so code (and tests)
that catch the built-in types keep working. This module imports nothing from the project (no import cycles).
"""

from __future__ import annotations

__all__ = ["UserError", "MissingFileError", "RunError"]


class UserError(ValueError):
    """A mistake in the user's input (flag, file, config, token); the message names it and how to fix it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file named by a flag or a config does not exist."""


class RunError(RuntimeError):
    """The run stopped for a reason outside this process (another rank died or went silent); the message says what
    happened, what was kept and how to go on."""
