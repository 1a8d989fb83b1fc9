"""The one place that writes outputs: file names from prompts, numbering, atomic writes, and paths kept inside the
output folder. Used by the txt2img scripts, the evaluation scripts, the distributed sampling engine, the explorer and
the embedding writer.

- :func:`safe_stem`: a prompt (any text) -> a file-name stem: no path separators, no leading dots, no control
  characters, at most ``max_len`` characters, a fallback for an empty result.
- :func:`inside`: the path, after checking that it resolves inside the output folder.
- :func:`atomic_write`: write to a temporary file beside the target, then rename; the file gets the usual permissions
  (``0o666`` less the umask); a failed write raises :class:`OutputError` naming the path (a full disk, also when a
  writer such as safetensors reports it through its own error type: "no space left on device"; a read-only file
  system; a path through a file), and leaves nothing behind. ``exclusive=True`` never replaces an existing file: the
  finished file is linked into place, which fails when the name is taken (``O_EXCL`` semantics, also between
  processes), so the name is claimed and the content complete in one step.
- :func:`save_image`, :func:`save_json`, :func:`save_text`: atomic writers for the usual outputs.
- :func:`claim_numbered`: write a file under the first free name of a numbered series (``settings-0003.json``),
  exclusively: of two runs claiming the same number at once, one gets it and the other the next one.
- :func:`save_record`: a record with a fixed name (``clip_similarity.json``) that a rerun never replaces: taken, it
  becomes ``clip_similarity-0001.json``, ``-0002`` ...
- :func:`claim_folder`: create a folder that no other run uses (``<name>``, else ``<name>_1``, ``<name>_2``, ...).
- :func:`ensure_folder`: an output folder given by a flag, created; a file in its place or a folder that cannot be
  written is one error naming the flag.
- :func:`locked`: an exclusive lock (``flock``) around a read-modify-write of a shared record.
- :func:`next_index`: the next free number for files named ``<prefix><number><suffix>`` in a folder (where a claim
  starts looking), so a rerun into the same folder keeps earlier records (samples, grids, ``settings-0001.json``).
"""

from ldm.outputs.files import (
    OutputError,
    atomic_write,
    claim_folder,
    claim_numbered,
    ensure_folder,
    file_mode,
    image_writer,
    inside,
    json_text,
    next_index,
    record_number,
    safe_stem,
    save_image,
    save_json,
    save_record,
    save_text,
    text_writer,
    write_error,
)
from ldm.outputs.locks import locked
from ldm.outputs.run_folder import RunFolder

__all__ = [
    "OutputError", "safe_stem", "inside", "atomic_write", "write_error", "save_image", "save_json", "save_text",
    "image_writer", "text_writer", "json_text", "claim_numbered", "save_record", "record_number", "ensure_folder",
    "locked", "next_index", "file_mode", "claim_folder", "RunFolder",
]  # fmt: skip
