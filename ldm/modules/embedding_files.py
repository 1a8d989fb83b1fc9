"""Textual-inversion embedding files: reading and writing every supported format (the layer below
:mod:`ldm.modules.embedding_interop`, which adds token ids, tokenizers and the embedding manager; import from there).
Reading and writing textual-inversion embeddings in the formats other tools use.

Formats (all read with `torch.load(weights_only=True)` or safetensors; nothing else is ever unpickled):

- `ti`: this project and rinongal/textual_inversion. `.pt`: `{"string_to_token": {p: 0-dim int64},
  "string_to_param": nn.ParameterDict{p: [nv, D]}}` (the only class allowed beyond tensors and containers is
  `torch.nn.ParameterDict`); `.safetensors`: `string_to_token.<p>` and `string_to_param.<p>` tensors.
- `a1111`: AUTOMATIC1111 web UI. `.pt`: `{"string_to_token": {"*": int}, "string_to_param": {"*": [nv, D]},
  "name": str, "step": int, "sd_checkpoint": str|None, "sd_checkpoint_name": str|None}`; `.safetensors`:
  `{"emb_params": [nv, D]}`. The trigger word is `name` (or the file stem), not the `*` key.
- `diffusers`: `learned_embeds.bin` / `.safetensors`: `{token: [D] or [nv, D]}`.
- `sdxl`: SDXL's two towers, the file AUTOMATIC1111, ComfyUI and diffusers share: `{"clip_l": [nv, 768],
  "clip_g": [nv, 1280]}` (`.safetensors`, or the same dict in a `.pt`); one placeholder per file, read as `*` with
  the file stem as its trigger name (as `emb_params` files). In memory the two parts sit side by side,
  `[nv, 768 + 1280]`, with `Embeddings.towers` naming the split (this is how the SDXL embedding manager holds them).
  Several SDXL placeholders in one file use the `ti` layout with `sdxl_towers.<name>` widths added.

Other tools' files carry no model family: their tower structure and widths tell it (``ldm.models.description``: a
single vector of 768 is SD v1's CLIP ViT-L/14, 1024 SD v2's OpenCLIP ViT-H/14, 1280 LDM's BERT; `clip_l`/`clip_g` is
SDXL). A file that does not fit the model is refused with what it fits named. Widths cannot tell single towers of one
width apart (ToyWorld 1's BERT and ToyWorld 2's CLIP are both 128 wide): the files this project writes record the
family of the text encoder they were learned with (``family``: a ``.pt`` key, safetensors metadata; the description's
family names), and a file of another family than the model's is refused naming both (:func:`check_family`).
Token ids are looked up with the model's own tokenizer when a model (or its config) is at hand, so other widths
(ToyWorld 128, the tiny test models) work too; only without one is the tokenizer guessed from the widths.

Writing: every file is written atomically through :mod:`ldm.outputs` (umask permissions, nothing left behind on a
full disk). ``.pt`` files are zip archives holding only ``<archive>/data.pkl``, ``<archive>/version`` and
``<archive>/data/<n>`` (:func:`save_torch`): torch's writer adds ``.format_version``, ``.storage_alignment``,
``byteorder`` and ``.data/serialization_id`` records, which AUTOMATIC1111's safe-unpickle check rejects; torch reads
the archive without them (it defaults to little-endian, as written on every platform torch supports here).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.models.description import families_for_vectors, family_title
from ldm.outputs import atomic_write
from ldm.util import safe_torch_load

logger = logging.getLogger(__name__)

FORMATS = ("ti", "a1111", "diffusers")  # for SDXL embeddings a1111 and diffusers both mean the clip_l/clip_g file
SDXL_TOWERS = ("clip_l", "clip_g")  # the shared SDXL file's keys, first and second tower
TORCH_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")
# Exactly the classes the original TI files pickle besides tensors and builtin containers.
ALLOWED_GLOBALS = [nn.ParameterDict]
# The zip members a `.pt` may hold (AUTOMATIC1111's safe-unpickle allow-list): <archive>/data.pkl, <archive>/version,
# <archive>/data/<n>.
RENAME_HINT = "rename it (scripts/convert_embedding.py --placeholder, scripts/merge_embeddings.py --rename)"
PORTABLE_MEMBER = re.compile(r"[^/]+/(data\.pkl|version|data/\d+)")


class EmbeddingFileError(ValueError):
    """An embeddings file cannot be read, has an unknown layout, or does not fit the model."""


@dataclass
class Embeddings:
    """Placeholder vectors independent of the file format.

    vectors: placeholder -> `[num_vectors, D]` float32. tokens: placeholder -> token id where the file says it
    (TI files); foreign formats leave it empty. name: the A1111 trigger word, if any. towers: for SDXL, the towers'
    names and widths in the order their parts sit side by side in each vector (None: one tower).
    """

    vectors: dict[str, torch.Tensor]
    tokens: dict[str, int] = field(default_factory=dict)
    source_format: str = "ti"
    name: str | None = None
    towers: tuple[tuple[str, int], ...] | None = None
    family: str | None = None  # the model family of the text encoder they were learned with, where the file says it

    @property
    def dim(self) -> int:
        dims = {int(v.shape[-1]) for v in self.vectors.values()}
        if len(dims) != 1:
            raise EmbeddingFileError(f"placeholders have different vector sizes {sorted(dims)}")
        return dims.pop()

    @property
    def widths(self) -> dict[str, int]:
        """Tower name -> vector width (``{"": D}`` for one tower)."""
        return dict(self.towers) if self.towers else {"": self.dim}

    def tower_parts(self, key: str) -> dict[str, torch.Tensor]:
        """One placeholder's vectors per tower (``{"": [nv, D]}`` for one tower)."""
        vector, parts, start = self.vectors[key], {}, 0
        for name, width in self.widths.items():
            parts[name] = vector[:, start : start + width]
            start += width
        return parts


def describe_widths(widths: dict[str, int]) -> str:
    """Vectors of these widths in words, with the families they fit (``ldm.models.description``)."""
    if list(widths) == [""]:
        shape = f"vectors of size {widths['']}"
    else:
        shape = "vectors for two towers (" + ", ".join(f"{k} {v}" for k, v in widths.items()) + ")"
    families = families_for_vectors(widths)
    fits = " or ".join(family_title(f) for f in families) if families else "no released model family"
    return f"{shape}, which fits {fits}"


def family_of(dim: int) -> str:
    """The families a single vector size belongs to, in words."""
    families = families_for_vectors({"": int(dim)})
    return " or ".join(family_title(f) for f in families) if families else "no released model family"


def check_dim(embeddings: Embeddings, expected: int | dict[str, int], source: str | os.PathLike) -> None:
    """Raise `EmbeddingFileError` naming what the file fits when its towers/widths do not fit the model's
    (``expected``: the model's tower name -> width, or one width)."""
    expected = {"": int(expected)} if isinstance(expected, int) else dict(expected)
    found = embeddings.widths
    if found == expected:
        return
    hint = "Use an embedding trained for this model."
    if list(found) != list(expected):
        hint = (
            "SD 1/SD 2 embeddings (one tower) and SDXL embeddings (clip_l and clip_g) do not convert into each "
            "other; use one trained for this model."
        )
    families = families_for_vectors(expected)
    need = f"size {expected['']}" if list(expected) == [""] else " and ".join(f"{k} {v}" for k, v in expected.items())
    need += f" ({family_title(families[0])})" if families else ""
    raise EmbeddingFileError(f"Embeddings '{source}' have {describe_widths(found)}; this model needs {need}. {hint}")


def check_family(embeddings: Embeddings, family: str | None, source: str | os.PathLike) -> None:
    """Raise `EmbeddingFileError` naming both families when the file records another text encoder's family than the
    model's (``family``, ``ldm.models.description``): vectors of one tower mean nothing to another, whatever the
    width."""
    if embeddings.family and family and embeddings.family != family:
        raise EmbeddingFileError(
            f"Embeddings '{source}' were learned for {family_title(embeddings.family)}; this model is "
            f"{family_title(family)}. Vectors of one text encoder mean nothing to another, even at the same size "
            f"({embeddings.dim}). Use an embedding trained for this model."
        )


def _recorded_family(value: Any, path: Path) -> str | None:
    if value is not None and not isinstance(value, str):
        raise EmbeddingFileError(f"'{path}': its 'family' is a {type(value).__name__}, not a name like 'sd1'")
    return value


def _as_matrix(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{where} is a {type(value).__name__}, not a tensor")
    value = value.detach().float().cpu()
    if value.ndim == 1:
        value = value[None]  # [D] -> [1, D]
    if value.ndim != 2:
        raise EmbeddingFileError(f"{where} has shape {tuple(value.shape)}; expected [D] or [num_vectors, D]")
    return value.contiguous()


def _torch_load(path: Path) -> Any:
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):  # the classes original TI files pickle, nothing else
        return safe_torch_load(
            path,
            refused=f"Refused to load '{path}'",
            refused_hint="Only tensors and an nn.ParameterDict are read; convert it in a trusted environment.",
            corrupt=f"Embeddings file '{path}'",
            corrupt_hint="Save or download it again.",
            error=EmbeddingFileError,
        )


def _params_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, nn.ParameterDict):
        return dict(value._parameters)  # as pickled by any torch version
    if isinstance(value, dict):
        return dict(value)
    raise EmbeddingFileError(f"'string_to_param' is a {type(value).__name__}, not a dict")


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read any supported embeddings file (format detected from its content)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"Embeddings file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
        except Exception as err:
            raise EmbeddingFileError(f"'{path}' is not a readable safetensors file ({err}).") from err
        return dataclasses.replace(_from_flat(flat, path), family=_recorded_family(meta.get("family"), path))
    if path.suffix not in TORCH_SUFFIXES:
        raise EmbeddingFileError(f"'{path}': unknown extension; use .safetensors or one of {TORCH_SUFFIXES}")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise EmbeddingFileError(f"'{path}' holds a {type(obj).__name__}, not a dict of embeddings")
    if set(obj) == set(SDXL_TOWERS):
        return _sdxl(obj, path)
    if "string_to_param" in obj:
        params = _params_dict(obj["string_to_param"])
        vectors = {k: _as_matrix(v, f"'{path}' string_to_param[{k!r}]") for k, v in params.items()}
        tokens = {k: int(torch.as_tensor(v).reshape(())) for k, v in dict(obj.get("string_to_token", {})).items()}
        is_a1111 = "name" in obj or "step" in obj
        towers = _towers({k: int(v) for k, v in dict(obj.get("sdxl_towers", {})).items()})
        name = obj.get("name") if is_a1111 else None
        family = _recorded_family(obj.get("family"), path)
        return Embeddings(vectors, tokens, "a1111" if is_a1111 else "ti", name, towers, family)
    return _diffusers(obj, path)


def _towers(widths: dict[str, int]) -> tuple[tuple[str, int], ...] | None:
    return tuple((k, widths[k]) for k in SDXL_TOWERS) if widths else None


def _sdxl(obj: dict[str, Any], path: Path) -> Embeddings:
    """The shared SDXL file: ``clip_l`` [nv, D_l] and ``clip_g`` [nv, D_g] -> one placeholder."""
    parts = [_as_matrix(obj[k], f"'{path}' {k}") for k in SDXL_TOWERS]
    if parts[0].shape[0] != parts[1].shape[0]:
        raise EmbeddingFileError(
            f"'{path}': clip_l has {parts[0].shape[0]} vectors and clip_g {parts[1].shape[0]}; SDXL files need the "
            "same number of vectors in both towers"
        )
    towers = tuple((k, int(v.shape[1])) for k, v in zip(SDXL_TOWERS, parts, strict=True))
    # placeholder "*" and the file stem as trigger name, as A1111's one-embedding files (emb_params)
    return Embeddings({"*": torch.cat(parts, dim=1)}, {}, "sdxl", path.stem, towers)


def _from_flat(flat: dict[str, torch.Tensor], path: Path) -> Embeddings:
    if "emb_params" in flat:
        return Embeddings({"*": _as_matrix(flat["emb_params"], f"'{path}' emb_params")}, {}, "a1111", path.stem)
    if set(flat) == set(SDXL_TOWERS):
        return _sdxl(flat, path)
    if any(k.startswith("string_to_param.") for k in flat):
        prefix = "string_to_param."
        vectors = {k[len(prefix) :]: _as_matrix(v, f"'{path}' {k}") for k, v in flat.items() if k.startswith(prefix)}
        tokens = {k.split(".", 1)[1]: int(v.reshape(())) for k, v in flat.items() if k.startswith("string_to_token.")}
        widths = {k.split(".", 1)[1]: int(v.reshape(())) for k, v in flat.items() if k.startswith("sdxl_towers.")}
        return Embeddings(vectors, tokens, "ti", towers=_towers(widths))
    return _diffusers(flat, path)


def _diffusers(obj: dict[str, Any], path: Path) -> Embeddings:
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(obj):
        raise EmbeddingFileError(
            f"'{path}' is not a known embeddings layout (keys {sorted(obj)[:10]}); expected TI "
            "('string_to_param'), A1111 ('emb_params' or 'string_to_param' + 'name'), diffusers ({token: tensor}) or "
            "SDXL ('clip_l' and 'clip_g')."
        )
    return Embeddings({k: _as_matrix(v, f"'{path}' [{k!r}]") for k, v in tensors.items()}, {}, "diffusers")


def write_embeddings(embeddings: Embeddings, path: str | os.PathLike, fmt: str = "ti") -> Path:
    """Write `embeddings` as `fmt` (ti | a1111 | diffusers, or sdxl); `.safetensors` or a torch suffix picks the
    container. SDXL embeddings (two towers) are written as the shared ``clip_l``/``clip_g`` file by every format but
    `ti` (one placeholder per file: A1111, ComfyUI and diffusers read only that); `ti` keeps several placeholders and
    records the towers' widths. `sdxl` is the clip_l/clip_g file and refuses single-tower embeddings.

    The write is atomic; the file gets the umask's permissions; its folder must exist (an error names it).
    """
    path = Path(path)
    if fmt not in (*FORMATS, "sdxl"):
        raise EmbeddingFileError(f"unknown format '{fmt}'; choose one of {FORMATS}")
    if path.suffix != ".safetensors" and path.suffix not in TORCH_SUFFIXES:  # what read_embeddings accepts
        raise EmbeddingFileError(
            f"cannot write '{path}': no reader accepts the extension '{path.suffix}'; end the name in .safetensors "
            f"or one of {', '.join(TORCH_SUFFIXES)}"
        )
    if not path.parent.is_dir():
        raise EmbeddingFileError(
            f"cannot write '{path}': the folder '{path.parent}' does not exist; create it first or choose another "
            "output path"
        )
    safetensors = path.suffix == ".safetensors"
    # the family of a single tower (a .pt key, safetensors metadata); SDXL's two towers say it by their structure
    extra = {"family": embeddings.family} if embeddings.family and not embeddings.towers else {}
    vectors = {k: v.detach().float().cpu().contiguous() for k, v in embeddings.vectors.items()}
    if fmt == "sdxl" and not embeddings.towers:
        raise EmbeddingFileError(
            f"SDXL files need SDXL embeddings (clip_l and clip_g); these have {describe_widths(embeddings.widths)}"
        )
    if embeddings.towers and fmt != "ti":
        if len(vectors) != 1:
            raise EmbeddingFileError(
                f"SDXL embedding files (clip_l/clip_g) hold one placeholder; got {sorted(vectors)}. Write them one by "
                "one, or as --to ti."
            )
        parts = {k: v.contiguous() for k, v in embeddings.tower_parts(next(iter(vectors))).items()}
        _save_safetensors(parts, path) if safetensors else save_torch(parts, path)
        return path
    if fmt == "ti":
        missing = sorted(set(vectors) - set(embeddings.tokens))
        if missing:
            raise EmbeddingFileError(f"TI files need a token id for every placeholder; missing for {missing}")
        tokens = {k: torch.tensor(embeddings.tokens[k], dtype=torch.int64) for k in vectors}
        towers = {k: torch.tensor(w, dtype=torch.int64) for k, w in embeddings.towers or ()}
        if safetensors:
            flat = {f"string_to_token.{k}": t for k, t in tokens.items()}
            flat.update({f"string_to_param.{k}": v for k, v in vectors.items()})
            flat.update({f"sdxl_towers.{k}": w for k, w in towers.items()})
            _save_safetensors(flat, path, extra)
        else:
            params = nn.ParameterDict({k: nn.Parameter(v) for k, v in vectors.items()})
            data = {"string_to_token": tokens, "string_to_param": params, **extra}
            save_torch({**data, "sdxl_towers": towers} if towers else data, path)
    elif fmt == "a1111":
        if len(vectors) != 1:
            raise EmbeddingFileError(f"A1111 files hold one embedding; got {sorted(vectors)}. Convert them one by one.")
        (key, vector), name = next(iter(vectors.items())), embeddings.name or path.stem
        if safetensors:
            _save_safetensors({"emb_params": vector}, path, extra)
        else:
            data = {"string_to_token": {"*": int(embeddings.tokens.get(key, 265))}, "string_to_param": {"*": vector},
                    "name": name, "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None, **extra}  # fmt: skip
            save_torch(data, path)
    elif safetensors:
        _save_safetensors(vectors, path, extra)
    else:
        save_torch(vectors, path)
    return path


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    data = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=metadata or None))


def portable_pt_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` as a zip archive with only the members ``<archive>/data.pkl``, ``<archive>/version`` and
    ``<archive>/data/<n>`` (stored, not compressed), which AUTOMATIC1111's safe-unpickle check accepts.

    The dropped records (``.format_version``, ``.storage_alignment``, ``byteorder``, ``.data/serialization_id``)
    are optional for ``torch.load``: without ``byteorder`` it reads little-endian data, which is what torch writes
    on the little-endian machines it runs on (checked below).
    """
    import sys

    if sys.byteorder != "little":
        raise EmbeddingFileError("writing .pt embeddings needs a little-endian machine; write .safetensors instead")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    out = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if PORTABLE_MEMBER.fullmatch(info.filename):
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), src.read(info))
    return out.getvalue()


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as a portable ``.pt`` (:func:`portable_pt_bytes`), atomically, with umask permissions."""
    data = portable_pt_bytes(obj)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
