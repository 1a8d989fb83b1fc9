"""Stable per-prompt folders of an engine run: a prompt's folder name, once given, is recorded and never changes.

``<outdir>/.engine/folders.json`` maps every prompt a run into the folder has seen to its folder name
(:func:`ldm.engine.items.prompt_stems`). A later run with more prompts keeps every recorded name; a new prompt whose
name collides gets the suffix, never an old one, so no finished image is sampled again into a new folder. Rank 0
reads and extends the record under a lock (two runs into one folder at once see each other's names) and shares the
names with the other ranks.

A folder made before the record existed (where colliding prompts all got ``-<hash>``) is adopted as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ldm.engine.distributed import broadcast_plan
from ldm.engine.items import prompt_stems
from ldm.errors import RunError, UserError
from ldm.outputs import locked, safe_stem, save_json

__all__ = ["FOLDERS_FILE", "recorded_folders", "assign_folders", "prompt_folders"]

FOLDERS_FILE = "folders.json"  # inside the run's state folder (.engine)


def recorded_folders(state_dir: str | Path) -> dict[str, str]:
    """The names recorded in ``state_dir/folders.json`` (empty when there is none yet)."""
    path = Path(state_dir) / FOLDERS_FILE
    if not path.is_file():
        return {}
    try:
        folders = json.loads(path.read_text(encoding="utf-8"))["folders"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is damaged ({err}); restore it, or use another output folder") from err
    return {str(k): str(v) for k, v in folders.items()}


def _legacy_name(root: Path, prompt: str) -> str | None:
    """The ``<stem>-<hash>`` folder an earlier version gave ``prompt`` in ``root/<method>/``, if it exists."""
    name = f"{safe_stem(prompt)}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"
    if root.is_dir() and any((d / name).is_dir() for d in root.iterdir() if d.is_dir()):
        return name
    return None


def assign_folders(root: str | Path, state_dir: str | Path, prompts: Sequence[str]) -> dict[str, str]:
    """The folder name of every prompt: the recorded one, else a new one (recorded before it is used)."""
    root, state_dir = Path(root), Path(state_dir)
    with locked(state_dir / (FOLDERS_FILE + ".lock")):
        given = recorded_folders(state_dir)
        if not given:
            given = {p: name for p in dict.fromkeys(prompts) if (name := _legacy_name(root, p))}
        stems = prompt_stems(prompts, given)
        record = given | stems
        if record != recorded_folders(state_dir):
            save_json({"folders": record}, state_dir / FOLDERS_FILE, root)
    return stems


def prompt_folders(fabric: Any, root: str | Path, state_dir: str | Path, prompts: Sequence[str]) -> dict[str, str]:
    """:func:`assign_folders` on rank 0, the same names on every rank."""
    names: dict[str, str] | str | None = None
    error: Exception | None = None
    if int(fabric.global_rank) == 0:
        try:
            names = assign_folders(root, state_dir, prompts)
        except (ValueError, OSError) as err:
            error, names = err, str(err)
    names = broadcast_plan(fabric, names)
    if error is not None:
        raise error
    if isinstance(names, str):
        raise RunError(f"rank 0 stopped the run: {names}")
    return names
