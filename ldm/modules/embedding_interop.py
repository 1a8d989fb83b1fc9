"""Reading and writing textual-inversion embeddings in the formats other tools use.

Formats (all read with `torch.load(weights_only=True)` or safetensors; nothing else is ever unpickled):

- `ti`: this project and rinongal/textual_inversion. `.pt`: `{"string_to_token": {p: 0-dim int64},
  "string_to_param": nn.ParameterDict{p: [nv, D]}}` (the only class allowed beyond tensors and containers is
  `torch.nn.ParameterDict`); `.safetensors`: `string_to_token.<p>` and `string_to_param.<p>` tensors.
- `a1111`: AUTOMATIC1111 web UI. `.pt`: `{"string_to_token": {"*": int}, "string_to_param": {"*": [nv, D]},
  "name": str, "step": int, "sd_checkpoint": str|None, "sd_checkpoint_name": str|None}`; `.safetensors`:
  `{"emb_params": [nv, D]}`. The trigger word is `name` (or the file stem), not the `*` key.
- `diffusers`: `learned_embeds.bin` / `.safetensors`: `{token: [D] or [nv, D]}`.

The vector size tells the model family: 768 SD v1 (CLIP ViT-L/14), 1024 SD v2 (OpenCLIP ViT-H/14), 1280 LDM
text2img-large (BERT). A file of the wrong size is refused with the family it fits named. Sizes alone cannot tell
towers of one width apart (ToyWorld 1's BERT and ToyWorld 2's CLIP are both 128 wide): files this project writes
record the family of the text encoder they were learned with (``family``: a ``.pt`` key, safetensors metadata), and
a file of another family is refused naming both (:func:`check_family`). Token ids are looked up
with the model's own tokenizer when a model (or its config) is at hand, so other widths (ToyWorld 128, the tiny test
models 32) work too; only without one is the tokenizer guessed from the width.

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

from ldm.outputs import atomic_write
from ldm.util import safe_torch_load

logger = logging.getLogger(__name__)

FAMILIES: dict[int, str] = {
    768: "SD v1 (CLIP ViT-L/14 text encoder)",
    1024: "SD v2 (OpenCLIP ViT-H/14 text encoder)",
    1280: "LDM text2img-large (BERT text encoder)",
}
FORMATS = ("ti", "a1111", "diffusers")
TORCH_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")
# Exactly the classes the original TI files pickle besides tensors and builtin containers.
ALLOWED_GLOBALS = [nn.ParameterDict]
# The zip members a `.pt` may hold (AUTOMATIC1111's safe-unpickle allow-list): <archive>/data.pkl, <archive>/version,
# <archive>/data/<n>.
RENAME_HINT = "rename it (scripts/convert_embedding.py --placeholder, scripts/merge_embeddings.py --rename)"
PORTABLE_MEMBER = re.compile(r"[^/]+/(data\.pkl|version|data/\d+)")


# Text-encoder families (the keys of ldm.models.description.FAMILIES) and the encoder classes that make them.
FAMILY_TITLES = {"ldm": "LDM text2img-large and ToyWorld 1 (BERT text encoder)",
                 "sd1": "SD v1 and ToyWorld 2 (CLIP text encoder)", "sd2": "SD v2 (OpenCLIP text encoder)"}  # fmt: skip
_ENCODER_FAMILIES = {"BERTEmbedder": "ldm", "FrozenCLIPEmbedder": "sd1", "FrozenOpenCLIPEmbedder": "sd2"}


class EmbeddingFileError(ValueError):
    """An embeddings file cannot be read, has an unknown layout, or does not fit the model."""


def text_encoder_family(encoder: Any) -> str | None:
    """The family of a text encoder (an instance, its class or a config's ``target`` string): "ldm" (BERT), "sd1"
    (CLIP), "sd2" (OpenCLIP), None when unknown.

    TO BE REPLACED by the model description once ``ldm/models/description.py`` (branch sdxl) is in main:
    ``describe_model(model).family`` / ``describe_config(config).family``. Until then this is the one place that
    reads the family; it knows the towers by their class names, as the description does.
    """
    name = encoder if isinstance(encoder, str) else (encoder.__name__ if isinstance(encoder, type) else None)
    name = (name or type(encoder).__name__).rsplit(".", 1)[-1]
    return _ENCODER_FAMILIES.get(name)


def config_family(config_path: str | os.PathLike) -> str | None:
    """:func:`text_encoder_family` of the text encoder a model config builds (``cond_stage_config.target``).
    TO BE REPLACED with it by ``describe_config(config_path).family``."""
    from omegaconf import OmegaConf

    return text_encoder_family(
        str(OmegaConf.select(OmegaConf.load(config_path), "model.params.cond_stage_config.target"))
    )


@dataclass
class Embeddings:
    """Placeholder vectors independent of the file format.

    vectors: placeholder -> `[num_vectors, D]` float32. tokens: placeholder -> token id where the file says it
    (TI files); foreign formats leave it empty. name: the A1111 trigger word, if any.
    """

    vectors: dict[str, torch.Tensor]
    tokens: dict[str, int] = field(default_factory=dict)
    source_format: str = "ti"
    name: str | None = None
    family: str | None = None  # the text encoder's family the vectors were learned with, where the file says it

    @property
    def dim(self) -> int:
        dims = {int(v.shape[-1]) for v in self.vectors.values()}
        if len(dims) != 1:
            raise EmbeddingFileError(f"placeholders have different vector sizes {sorted(dims)}")
        return dims.pop()


def family_of(dim: int) -> str:
    return FAMILIES.get(int(dim), "no model family known by its size (768 SD v1, 1024 SD v2, 1280 LDM)")


def check_dim(embeddings: Embeddings, expected_dim: int, source: str | os.PathLike) -> None:
    """Raise `EmbeddingFileError` naming both families when the vector size does not fit the model."""
    dim = embeddings.dim
    if dim != expected_dim:
        raise EmbeddingFileError(
            f"Embeddings '{source}' have vectors of size {dim}, which fits {family_of(dim)}; this model needs size "
            f"{expected_dim}"
            + (f" ({FAMILIES[expected_dim]})" if expected_dim in FAMILIES else "")
            + ". Use an embedding trained for this model."
        )


def check_family(embeddings: Embeddings, family: str | None, source: str | os.PathLike) -> None:
    """Raise `EmbeddingFileError` naming both families when the file records another text encoder's family than the
    model's (vectors of one tower mean nothing to another, whatever their width)."""
    if embeddings.family and family and embeddings.family != family:
        raise EmbeddingFileError(
            f"Embeddings '{source}' were learned with the {FAMILY_TITLES.get(embeddings.family, embeddings.family)}; "
            f"this model has the {FAMILY_TITLES.get(family, family)}. Vectors of one text encoder mean nothing to "
            f"another, even at the same size ({embeddings.dim}). Use an embedding trained for this model."
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
    if "string_to_param" in obj:
        params = _params_dict(obj["string_to_param"])
        vectors = {k: _as_matrix(v, f"'{path}' string_to_param[{k!r}]") for k, v in params.items()}
        tokens = {k: int(torch.as_tensor(v).reshape(())) for k, v in dict(obj.get("string_to_token", {})).items()}
        is_a1111 = "name" in obj or "step" in obj
        return Embeddings(vectors, tokens, "a1111" if is_a1111 else "ti", obj.get("name") if is_a1111 else None,
                          _recorded_family(obj.get("family"), path))  # fmt: skip
    return _diffusers(obj, path)


def _from_flat(flat: dict[str, torch.Tensor], path: Path) -> Embeddings:
    if "emb_params" in flat:
        return Embeddings({"*": _as_matrix(flat["emb_params"], f"'{path}' emb_params")}, {}, "a1111", path.stem)
    if any(k.startswith("string_to_param.") for k in flat):
        prefix = "string_to_param."
        vectors = {k[len(prefix) :]: _as_matrix(v, f"'{path}' {k}") for k, v in flat.items() if k.startswith(prefix)}
        tokens = {k.split(".", 1)[1]: int(v.reshape(())) for k, v in flat.items() if k.startswith("string_to_token.")}
        return Embeddings(vectors, tokens, "ti")
    return _diffusers(flat, path)


def _diffusers(obj: dict[str, Any], path: Path) -> Embeddings:
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(obj):
        raise EmbeddingFileError(
            f"'{path}' is not a known embeddings layout (keys {sorted(obj)[:10]}); expected TI "
            "('string_to_param'), A1111 ('emb_params' or 'string_to_param' + 'name') or diffusers ({token: tensor})."
        )
    return Embeddings({k: _as_matrix(v, f"'{path}' [{k!r}]") for k, v in tensors.items()}, {}, "diffusers")


def write_embeddings(embeddings: Embeddings, path: str | os.PathLike, fmt: str = "ti") -> Path:
    """Write `embeddings` as `fmt` (ti | a1111 | diffusers); `.safetensors` or a torch suffix picks the container.

    The write is atomic; the file gets the umask's permissions; its folder must exist (an error names it).
    """
    path = Path(path)
    if fmt not in FORMATS:
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
    extra = {"family": embeddings.family} if embeddings.family else {}  # a .pt key, safetensors metadata
    vectors = {k: v.detach().float().cpu().contiguous() for k, v in embeddings.vectors.items()}
    if fmt == "ti":
        missing = sorted(set(vectors) - set(embeddings.tokens))
        if missing:
            raise EmbeddingFileError(f"TI files need a token id for every placeholder; missing for {missing}")
        tokens = {k: torch.tensor(embeddings.tokens[k], dtype=torch.int64) for k in vectors}
        if safetensors:
            flat = {f"string_to_token.{k}": t for k, t in tokens.items()}
            flat.update({f"string_to_param.{k}": v for k, v in vectors.items()})
            _save_safetensors(flat, path, extra)
        else:
            params = nn.ParameterDict({k: nn.Parameter(v) for k, v in vectors.items()})
            save_torch({"string_to_token": tokens, "string_to_param": params, **extra}, path)
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


def single_token_id(tokenizer: Any, word: str) -> int:
    """The id of `word` if the tokenizer maps it to exactly one token; an error showing the pieces otherwise."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) == 1 and ids[0] == unk and word != tokenizer.unk_token:
        raise EmbeddingFileError(
            f"'{word}' is not in the tokenizer's vocabulary (it maps to the unknown token {tokenizer.unk_token}). "
            f"Choose a placeholder that is one known token, or {RENAME_HINT}."
        )
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise EmbeddingFileError(
            f"'{word}' is not a single token: it tokenises to {len(ids)} tokens {pieces}. Choose a placeholder that "
            f"is one token (e.g. '*', '@', or a short rare word), or {RENAME_HINT}."
        )
    return int(ids[0])


def tokenizer_for_dim(dim: int) -> Any:
    """The tokenizer of the family a vector size belongs to (bundled files; nothing is downloaded)."""
    from ldm.modules.encoders import modules as enc

    if dim == 1280:
        from transformers import BertTokenizerFast

        return BertTokenizerFast(str(enc.BERT_VOCAB_FILE))
    if dim == 1024:  # SD v2: OpenCLIP's conventions over the same BPE vocabulary as CLIP
        from ldm.modules.encoders.openclip_tokenizer import OpenCLIPTokenizer

        return OpenCLIPTokenizer()
    if dim == 768:
        from transformers import CLIPTokenizer

        return CLIPTokenizer(str(enc.CLIP_VOCAB_FILE), str(enc.CLIP_MERGES_FILE))
    raise EmbeddingFileError(
        f"vectors of size {dim} fit {family_of(dim)}, so the tokenizer cannot be guessed from the size; give the "
        "model's config (--config) so that its own tokenizer looks up the token ids"
    )


def tokenizer_from_config(config_path: str | os.PathLike) -> tuple[Any, int]:
    """The tokenizer and vector size of the text encoder a model config builds (``model.params.cond_stage_config``).

    The encoder is built on the meta device: no memory for its weights, nothing loaded or downloaded.
    """
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    path = Path(config_path)
    if not path.is_file():
        raise EmbeddingFileError(f"--config {config_path}: no such file")
    config = OmegaConf.load(path)
    cond = OmegaConf.select(config, "model.params.cond_stage_config")
    if cond is None:
        raise EmbeddingFileError(f"--config {config_path} has no model.params.cond_stage_config (no text encoder)")
    with torch.device("meta"):
        encoder = instantiate_from_config(cond)
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        raise EmbeddingFileError(f"--config {config_path}: its text encoder {type(encoder).__name__} has no tokenizer")
    return tokenizer, int(encoder.embedding_dim)


def with_token_ids(embeddings: Embeddings, tokenizer: Any | None = None) -> Embeddings:
    """Fill in missing token ids with ``tokenizer`` (the model's), else the family's tokenizer guessed from the
    vector size; each placeholder must be a single token."""
    missing = [k for k in embeddings.vectors if k not in embeddings.tokens]
    if not missing:
        return embeddings
    tokenizer = tokenizer or tokenizer_for_dim(embeddings.dim)
    tokens = dict(embeddings.tokens)
    tokens.update({k: single_token_id(tokenizer, k) for k in missing})
    return dataclasses.replace(embeddings, vectors=dict(embeddings.vectors), tokens=tokens)


def renamed(embeddings: Embeddings, mapping: dict[str, str]) -> Embeddings:
    """Rename placeholders (their token ids are dropped, to be looked up again for the new strings)."""
    vectors = {mapping.get(k, k): v for k, v in embeddings.vectors.items()}
    tokens = {k: t for k, t in embeddings.tokens.items() if k not in mapping}
    return dataclasses.replace(embeddings, vectors=vectors, tokens=tokens)


def load_into_manager(manager: Any, path: str | os.PathLike, placeholder: str | None = None, tokenizer: Any = None):
    """Put the vectors of any supported file into an `EmbeddingManager` (added to, or replacing, its placeholders).

    `placeholder` renames a single-embedding file (A1111 and diffusers files name the concept differently);
    token ids are looked up with `tokenizer` (the model's), so a string that is not one token is an error.
    """
    embeddings = read_embeddings(path)
    check_dim(embeddings, manager.token_dim, path)
    check_family(embeddings, getattr(manager, "family", None), path)
    if placeholder is not None:
        if len(embeddings.vectors) != 1:
            raise EmbeddingFileError(f"'{path}' holds {sorted(embeddings.vectors)}; a placeholder renames one only")
        embeddings = renamed(embeddings, {next(iter(embeddings.vectors)): placeholder})
    embeddings = with_token_ids(embeddings, tokenizer)
    device = next(iter(manager.string_to_param_dict.values())).device if len(manager.string_to_param_dict) else None
    for key, vector in embeddings.vectors.items():
        manager.string_to_token_dict[key] = torch.tensor(embeddings.tokens[key], dtype=torch.int64)
        manager.string_to_param_dict[key] = nn.Parameter(vector.to(device) if device is not None else vector)
    manager.max_vectors_per_token = max(v.shape[0] for v in manager.string_to_param_dict.values())
    logger.info("Loaded %s embeddings %s from %s", embeddings.source_format, sorted(embeddings.vectors), path)
    return embeddings


def manager_embeddings(manager: Any) -> Embeddings:
    """The placeholders of an `EmbeddingManager` as `Embeddings` (for export)."""
    return Embeddings(
        {k: v.detach().float().cpu() for k, v in manager.string_to_param_dict.items()},
        {k: int(t) for k, t in manager.string_to_token_dict.items()},
        "ti",
        family=getattr(manager, "family", None),
    )
