"""CLIP similarity metrics as pure functions on features.

Textual Inversion (Gal et al. 2022, reference-spec 1.9):
- reconstruction = :func:`image_image_similarity` (mean pairwise cosine between generated and training images);
- editability = :func:`text_image_similarity` (mean cosine between the prompt, ``*`` removed, and each generated image).

Attend-and-Excite (Chefer et al. 2023, reference-spec 2.8):
- text features are averaged over the 80 ImageNet prompt templates of the CLIP paper (:func:`template_average`);
- full-prompt similarity = mean over images of cos(image, prompt);
- minimum-object similarity = mean over images of min over the prompt's parts of cos(image, part), the parts coming
  from :func:`split_prompt`.

All similarities are computed in float64 and returned as Python floats (or float64 tensors for per-image values).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
TEMPLATES_FILE = DATA_DIR / "imagenet_templates.txt"
PROMPTS_FILE = DATA_DIR / "attend_excite_prompts.txt"
SEPARATORS: tuple[str, ...] = (" and ", " with ")


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """``x / ||x||`` along ``dim`` in float64."""
    x = x.double()
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def _check_features(name: str, feats: Tensor) -> Tensor:
    if feats.ndim == 1:
        feats = feats.unsqueeze(0)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, D] feature matrix, got shape {list(feats.shape)}")
    return feats


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarities ``[N, M]`` between the rows of ``a`` ``[N, D]`` and ``b`` ``[M, D]``."""
    a = _check_features("a", a)
    b = _check_features("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return l2_normalize(a) @ l2_normalize(b).T  # [N, M]


def image_image_similarity(generated: Tensor, source: Tensor) -> float:
    """TI reconstruction score: mean of the ``[N_gen, N_src]`` cosine matrix of L2-normalised image features."""
    return float(cosine_matrix(generated, source).mean())


def text_image_similarities(text: Tensor, images: Tensor) -> Tensor:
    """Per-image cosine ``[N]`` between one text feature ``[D]`` (or ``[1, D]``) and image features ``[N, D]``."""
    text = _check_features("text", text)
    if text.shape[0] != 1:
        raise ValueError(f"expected one text feature, got {text.shape[0]}")
    return cosine_matrix(images, text)[:, 0]  # [N]


def text_image_similarity(text: Tensor, images: Tensor) -> float:
    """TI editability score / A&E full-prompt score: mean over images of cos(text, image)."""
    return float(text_image_similarities(text, images).mean())


def template_average(template_features: Tensor) -> Tensor:
    """Template-averaged text embedding ``[D]``: L2-normalise each ``[T, D]`` row, average, renormalise."""
    feats = _check_features("template_features", template_features)
    return l2_normalize(l2_normalize(feats).mean(dim=0))  # [D]


def format_templates(text: str, templates: Sequence[str]) -> list[str]:
    """``template.format(text)`` for each template (literally, as the A&E metric does: "a photo of a a cat.")."""
    return [t.format(text) for t in templates]


def load_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, ``#`` comment lines dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def load_templates(path: str | Path = TEMPLATES_FILE) -> list[str]:
    """The prompt templates, one per line, each with exactly one ``{}``."""
    templates = load_lines(path)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"{path}: every template needs exactly one '{{}}' (bad: {bad[:3]})")
    return templates


def split_prompt(prompt: str) -> list[str] | None:
    """Split a prompt into its object phrases for the minimum-object similarity.

    Rule (A&E ``compute_clip_similarity.py``): split at " and " if the prompt contains it, otherwise at " with ".
    - Neither separator: returns ``None``; the caller skips the prompt, as the reference does.
    - Several occurrences of the chosen separator ("a cat and a dog and a frog"): returns all parts, and the
      minimum-object similarity takes the minimum over all of them. The reference keeps only the first two parts; for
      prompts with one separator (all of the A&E prompt set) both rules agree.
    - " and " wins over " with ": "a cat with a crown and a dog" -> ["a cat with a crown", "a dog"].
    - Parts are stripped; a prompt with an empty part ("a cat and  ") returns ``None``.
    """
    for sep in SEPARATORS:
        if sep in prompt:
            parts = [p.strip() for p in prompt.split(sep)]
            if any(not p for p in parts):
                return None
            return parts
    return None


def min_object_similarities(part_similarities: Tensor) -> Tensor:
    """Per-image minimum over parts: ``[P, N]`` cosine table -> ``[N]``."""
    if part_similarities.ndim != 2 or 0 in part_similarities.shape:
        raise ValueError(f"expected a non-empty [parts, images] table, got {list(part_similarities.shape)}")
    return part_similarities.double().min(dim=0).values  # [N]


def min_object_similarity(part_similarities: Tensor) -> float:
    """A&E minimum-object score: mean over images of the minimum over parts (``[P, N]`` table)."""
    return float(min_object_similarities(part_similarities).mean())
