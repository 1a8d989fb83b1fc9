"""Textual Inversion's learned placeholder embeddings (Gal et al. 2022, "An Image is Worth One Word").

The text encoder maps a prompt to token ids and then to token embeddings ``e = E[ids]``. For a placeholder
string S* (e.g. ``*``) the manager replaces S*'s row by a learned vector v* (Sec. 4 of the paper), or by
``k`` vectors spliced in for a multi-vector placeholder, *before* the positional embedding is added. Only v* is
optimised: v* = argmin_v E ||eps - eps_theta(z_t, t, c_theta(y; v))||^2 (Eq. 2).

File format (``embeddings.pt``, as written by the original code)::

    {"string_to_token": {placeholder: 0-dim int64 tensor}, "string_to_param": nn.ParameterDict}

``.safetensors`` files hold the same data flat: ``string_to_token.<placeholder>``, ``string_to_param.<placeholder>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ldm.data.personalized_tokens import per_img_token_list
from ldm.modules.embedding_interop import tower_widths

logger = logging.getLogger(__name__)

DEFAULT_PLACEHOLDER_TOKEN = ["*"]
PROGRESSIVE_SCALE = 2000  # progressive_words: one more active vector every PROGRESSIVE_SCALE steps


class TextEmbedder(Protocol):
    """What the manager needs from a text encoder (``BERTEmbedder``, ``FrozenCLIPEmbedder`` and SD 2's
    ``FrozenOpenCLIPEmbedder`` provide it)."""

    embedding_dim: int

    def single_token_id(self, word: str) -> int: ...

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...


class EmbeddingManager(nn.Module):
    """Holds one learned ``[num_vectors, D]`` parameter per placeholder string and splices it into prompts.

    Args:
        embedder: the text encoder whose tokenizer and token-embedding table are used (not stored).
        placeholder_strings: strings to learn, each a single token (default ``["*"]``).
        initializer_words: one word per placeholder (may be shorter); its raw token embedding initialises the
            vector(s) and is kept frozen in ``initial_embeddings`` for the coarse regulariser. Without one the
            vectors start as ``torch.rand`` (uniform [0, 1)), as in the original. The original SD path added
            position-0's positional embedding to the initial vector (a side effect of calling the whole embeddings
            module); here both encoders use the raw token embedding.
        per_image_tokens: also learn one placeholder per training image (``per_img_token_list``).
        num_vectors_per_token: vectors per placeholder; more than one are spliced in, shifting later tokens.
        progressive_words: activate the vectors one at a time, 1 + step // 2000 of them (see :meth:`set_progress`).
        embedding_manager_ckpt: an embeddings file to :meth:`load` after construction ("" or None: none).
    """

    def __init__(
        self,
        embedder: TextEmbedder,
        placeholder_strings: Sequence[str] | None = None,
        initializer_words: Sequence[str] | None = None,
        per_image_tokens: bool = False,
        num_vectors_per_token: int = 1,
        progressive_words: bool = False,
        embedding_manager_ckpt: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            logger.warning("EmbeddingManager ignores unknown parameters %s", sorted(kwargs))
        if num_vectors_per_token < 1:
            raise ValueError(f"num_vectors_per_token must be >= 1, got {num_vectors_per_token}")
        placeholders = list(DEFAULT_PLACEHOLDER_TOKEN if placeholder_strings is None else placeholder_strings)
        n_named = len(placeholders)  # the per-image tokens added next are not the user's words
        if per_image_tokens:
            placeholders.extend(per_img_token_list)
        initializer_words = list(initializer_words or [])

        self.token_dim = embedder.embedding_dim
        # tower name -> width of its part of each vector ({"": D}; SDXL: clip_l and clip_g side by side)
        self.tower_widths = tower_widths(embedder)
        self.tokenizer = _tokenizer_of(embedder)  # the model's own: looks up the token ids of loaded files
        from ldm.models.description import encoder_family

        self.family = encoder_family(embedder)  # recorded in saved files; loaded files of another family are refused
        self.progressive_words = progressive_words
        self.progress_step = 0
        self.max_vectors_per_token = num_vectors_per_token
        self.string_to_token_dict: dict[str, torch.Tensor] = {}
        self.string_to_param_dict = nn.ParameterDict()
        self.initial_embeddings = nn.ParameterDict()

        device = next(iter(embedder.parameters())).device
        for idx, placeholder in enumerate(placeholders):
            token = embedder.single_token_id(placeholder)
            if idx < n_named and any(ch.isalnum() for ch in placeholder):  # a word, not a symbol such as "*"
                logger.warning(
                    "Placeholder string %r is a word of the text encoder's vocabulary: it takes that word over, so "
                    "every %r in a prompt means the learned embedding; pick a symbol or a rare token (e.g. '*') "
                    "to keep the word",
                    placeholder, placeholder,
                )  # fmt: skip
            self.string_to_token_dict[placeholder] = torch.tensor(token, dtype=torch.int64, device="cpu")
            if idx < len(initializer_words):
                init_id = torch.tensor([embedder.single_token_id(initializer_words[idx])], device=device)
                with torch.no_grad():
                    init_vec = embedder.token_embedding(init_id).detach().float()  # [1, D]
                vectors = init_vec.repeat(num_vectors_per_token, 1)  # [nv, D]
                self.initial_embeddings[placeholder] = nn.Parameter(vectors.clone(), requires_grad=False)
            else:
                vectors = torch.rand(num_vectors_per_token, self.token_dim, device=device)
            self.string_to_param_dict[placeholder] = nn.Parameter(vectors)

        if embedding_manager_ckpt:
            self.load(embedding_manager_ckpt)

    def set_progress(self, step: int) -> None:
        """Set the training step for ``progressive_words`` (1 + step // 2000 active vectors).

        The original counted forward calls instead (validation and logging passes included).
        """
        self.progress_step = int(step)

    def active_vectors(self, num_vectors: int) -> int:
        if self.progressive_words:
            return min(num_vectors, 1 + self.progress_step // PROGRESSIVE_SCALE)
        return min(num_vectors, self.max_vectors_per_token)

    def forward(self, tokenized_text: torch.Tensor, embedded_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the placeholder vectors into the token embeddings; inputs are left untouched.

        Args:
            tokenized_text: ``[B, N]`` token ids.
            embedded_text: ``[B, N, D]`` raw token embeddings (no positional term yet).

        Returns:
            ``(ids, emb)``. With one active vector per placeholder, each placeholder row is replaced and ``ids`` is
            unchanged. With k > 1, each occurrence (taken right to left) is replaced by k vectors and the id is
            written k times; later positions shift right by k - 1 and the row is truncated back to N.
        """
        ids = tokenized_text.clone()
        emb = embedded_text.clone()
        n = ids.shape[1]
        for placeholder, token in self.string_to_token_dict.items():
            vectors = self.string_to_param_dict[placeholder].to(emb.dtype)  # [nv, D]
            token = token.to(ids.device)
            k = self.active_vectors(vectors.shape[0])
            if k == 1:
                emb = torch.where((ids == token)[..., None], vectors[0], emb)
                continue
            rows, cols = torch.where(ids == token)
            if rows.numel() == 0:
                continue
            id_rows, emb_rows = list(ids.unbind(0)), list(emb.unbind(0))
            for row in rows.unique().tolist():
                for col in sorted(cols[rows == row].tolist(), reverse=True):
                    id_row, emb_row = id_rows[row], emb_rows[row]
                    id_rows[row] = torch.cat([id_row[:col], token.repeat(k), id_row[col + 1 :]])[:n]
                    emb_rows[row] = torch.cat([emb_row[:col], vectors[:k], emb_row[col + 1 :]])[:n]
            ids, emb = torch.stack(id_rows), torch.stack(emb_rows)
        return ids, emb

    def embedding_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable tensors (the placeholder vectors)."""
        return self.string_to_param_dict.parameters()

    def embedding_to_coarse_loss(self) -> torch.Tensor:
        """Sum over placeholders with an initializer word of (v - v_init)(v - v_init)^T / n: ``[nv, nv]``.

        With one vector this is the squared L2 distance to the initializer embedding, averaged over placeholders.
        """
        loss = torch.zeros((), device=self._device())
        count = len(self.initial_embeddings)
        for key, initial in self.initial_embeddings.items():
            diff = self.string_to_param_dict[key] - initial.to(self.string_to_param_dict[key].device)  # [nv, D]
            loss = loss + diff @ diff.T / count
        return loss

    def _device(self) -> torch.device:
        params = list(self.string_to_param_dict.values())
        return params[0].device if params else torch.device("cpu")

    def save(self, path: str | os.PathLike) -> None:
        """Write the placeholder tokens and vectors (``.pt`` in the original format, or ``.safetensors``).

        The write is atomic with umask permissions; the ``.pt`` zip holds only the members AUTOMATIC1111's
        safe-unpickle check accepts (``ldm.modules.embedding_interop.save_torch``).
        """
        from ldm.modules.embedding_interop import manager_embeddings, write_embeddings

        embeddings = manager_embeddings(self)
        # SDXL, one placeholder: the clip_l/clip_g file every SDXL tool reads; else this project's TI layout
        fmt = "sdxl" if embeddings.towers and len(embeddings.vectors) == 1 else "ti"
        write_embeddings(embeddings, Path(path), fmt=fmt)

    def load(self, path: str | os.PathLike) -> None:
        """Replace the placeholders and vectors with those of an embeddings file (``initial_embeddings`` is kept).

        Any format of ``ldm.modules.embedding_interop`` is accepted (ours/the original's, A1111, diffusers); ``.pt``
        files are read with ``torch.load(weights_only=True)`` and only ``nn.ParameterDict`` is allowed beyond
        tensors. A vector size that does not fit this text encoder is refused with the family it fits named.
        """
        from ldm.modules.embedding_interop import check_dim, check_family, read_embeddings, with_token_ids

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Embeddings file '{path}' does not exist (embedding_manager_ckpt / --embedding_path)"
            )
        embeddings = read_embeddings(path)
        check_dim(embeddings, self.tower_widths, path)
        check_family(embeddings, self.family, path)
        embeddings = with_token_ids(embeddings, self.tokenizer)
        device = self._device()
        self.string_to_token_dict = {
            k: torch.tensor(t, dtype=torch.int64) for k, t in embeddings.tokens.items() if k in embeddings.vectors
        }
        self.string_to_param_dict = nn.ParameterDict(
            {k: nn.Parameter(v.float().to(device)) for k, v in embeddings.vectors.items()}
        )
        self.max_vectors_per_token = max((v.shape[0] for v in embeddings.vectors.values()), default=1)
        logger.info("Loaded embeddings for %s from %s", sorted(embeddings.vectors), path)


def _tokenizer_of(embedder: Any) -> Any:
    """The embedder's tokenizer, or None (a BERT embedder built without one; files are then matched by width)."""
    try:
        return getattr(embedder, "tokenizer", None)
    except RuntimeError:
        return None
