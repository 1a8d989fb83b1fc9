"""The project's user errors: a bad flag, file, config, token or prompt, reported by the scripts as one line.

:class:`UserError` marks a mistake the user can fix; its message names the flag, file or token and says how. The
command-line wrapper :func:`ldm.cli.run_cli` prints it as ``error: <message>`` (no traceback) and exits with
status 2; anything else is a bug and keeps its traceback.

``UserError`` is a ``ValueError`` and :class:`MissingFileError` also a ``FileNotFoundError``, so code (and tests)
that catch the built-in types keep working. This module imports nothing from the project (no import cycles).
"""

from __future__ import annotations

__all__ = ["UserError", "MissingFileError"]


class UserError(ValueError):
    """A mistake in the user's input (flag, file, config, token); the message names it and how to fix it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file named by a flag or a config does not exist."""
