"""Textual-inversion embeddings in the formats other tools use: token ids, tokenizers, the embedding manager.

The formats themselves (TI, AUTOMATIC1111, diffusers, SDXL's clip_l/clip_g; reading, writing, what a file fits) are
in :mod:`ldm.modules.embedding_files`, re-exported here. This module adds the token ids a file does not carry
(looked up with the model's tokenizer, or the family's guessed from the vector widths) and the exchange with an
``EmbeddingManager``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.models.description import families_for_vectors
from ldm.modules.embedding_files import (  # noqa: F401  (this module is the public face of the formats)
    FORMATS,
    RENAME_HINT,
    SDXL_TOWERS,
    EmbeddingFileError,
    Embeddings,
    check_dim,
    check_family,
    describe_widths,
    family_of,
    portable_pt_bytes,
    read_embeddings,
    save_torch,
    write_embeddings,
)

logger = logging.getLogger(__name__)


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


def tokenizer_for_widths(widths: dict[str, int]) -> Any:
    """The tokenizer of the family vectors of these widths belong to (bundled files; nothing is downloaded)."""
    from ldm.modules.encoders import base as enc

    families = families_for_vectors(widths)
    if "ldm" in families:
        from transformers import BertTokenizerFast

        return BertTokenizerFast(str(enc.BERT_VOCAB_FILE))
    if "sd2" in families:  # SD v2: OpenCLIP's conventions over the same BPE vocabulary as CLIP
        from ldm.modules.encoders.openclip_tokenizer import OpenCLIPTokenizer

        return OpenCLIPTokenizer()
    if "sd1" in families or "sdxl" in families:  # SDXL: CLIP-L's tokenizer (both towers share the BPE ids)
        from transformers import CLIPTokenizer

        return CLIPTokenizer(str(enc.CLIP_VOCAB_FILE), str(enc.CLIP_MERGES_FILE))
    raise EmbeddingFileError(
        f"{describe_widths(widths)}, so the tokenizer cannot be guessed from them; give the model's "
        "config (--config) so that its own tokenizer looks up the token ids"
    )


def tokenizer_for_dim(dim: int) -> Any:
    """:func:`tokenizer_for_widths` of single-tower vectors of size ``dim``."""
    return tokenizer_for_widths({"": int(dim)})


def tokenizer_from_config(config_path: str | os.PathLike) -> tuple[Any, int]:
    """The tokenizer and vector size of the text encoder a model config builds (SDXL: both widths added)."""
    tokenizer, widths = tokenizer_and_widths(config_path)
    return tokenizer, sum(widths.values())


def tokenizer_and_widths(config_path: str | os.PathLike) -> tuple[Any, dict[str, int]]:
    """The tokenizer of the text encoder a model config builds (``model.params.cond_stage_config``) and its
    towers' vector widths (``{"": D}``, or SDXL's ``{"clip_l": .., "clip_g": ..}``).

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
    return tokenizer, tower_widths(encoder)


def tower_widths(embedder: Any) -> dict[str, int]:
    """A text encoder's placeholder widths per tower: ``{"": D}``, or SDXL's two (in the side-by-side order)."""
    names = getattr(embedder, "tower_names", None)
    if names:
        return dict(zip(names, embedder.tower_widths, strict=True))
    return {"": int(embedder.embedding_dim)}


def with_token_ids(embeddings: Embeddings, tokenizer: Any | None = None) -> Embeddings:
    """Fill in missing token ids with ``tokenizer`` (the model's), else the family's tokenizer guessed from the
    vector size; each placeholder must be a single token."""
    missing = [k for k in embeddings.vectors if k not in embeddings.tokens]
    if not missing:
        return embeddings
    tokenizer = tokenizer or tokenizer_for_widths(embeddings.widths)
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
    check_dim(embeddings, manager.tower_widths, path)
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
    widths = manager.tower_widths
    return Embeddings(
        {k: v.detach().float().cpu() for k, v in manager.string_to_param_dict.items()},
        {k: int(t) for k, t in manager.string_to_token_dict.items()},
        "ti",
        towers=tuple(widths.items()) if list(widths) != [""] else None,
        family=getattr(manager, "family", None),
    )
