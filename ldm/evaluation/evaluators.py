"""The two evaluation protocols on top of :mod:`ldm.evaluation.clip` and :mod:`ldm.evaluation.metrics`.

- :func:`evaluate_inversion`: Textual Inversion's reconstruction and editability scores (reference-spec 1.9).
- :func:`evaluate_prompt_set`: Attend-and-Excite's full-prompt and minimum-object scores (reference-spec 2.8) over a
  prompt file and a folder of images per prompt, laid out as ``<images_dir>/<prompt>/<*.png|*.jpg>`` (the layout the
  official A&E ``run.py`` writes: ``outputs/<prompt>/<seed>.png``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ldm.evaluation import metrics
from ldm.evaluation.clip import CLIPFeatureExtractor
from ldm.evaluation.images import IMAGE_EXTENSIONS, list_images, load_images

logger = logging.getLogger(__name__)

LAYOUT_HELP = (
    "expected layout: <images_dir>/<prompt>/<image files>, one sub-folder per prompt named exactly like the prompt "
    "(e.g. 'images/a cat and a dog/0000.png')"
)


def strip_placeholder(prompt: str, placeholder: str = "*") -> str:
    """The prompt with the placeholder removed and spaces collapsed ("a photo of *" -> "a photo of")."""
    return " ".join(prompt.replace(placeholder, " ").split())


def evaluate_inversion(
    extractor: CLIPFeatureExtractor,
    generated: Tensor | Sequence[Tensor],
    source: Tensor | Sequence[Tensor],
    prompt: str,
    placeholder: str = "*",
) -> dict[str, float | int | str]:
    """TI scores for images in [0, 1]: image-image similarity to ``source`` and text-image similarity to ``prompt``
    with the placeholder removed."""
    text = strip_placeholder(prompt, placeholder)
    if not text:
        raise ValueError(f"prompt {prompt!r} is empty once {placeholder!r} is removed; give a prompt with words")
    gen = extractor.encode_images(generated)  # [N, D]
    src = extractor.encode_images(source)  # [M, D]
    txt = extractor.encode_texts([text])  # [1, D]
    return {
        "prompt": prompt,
        "text": text,
        "image_similarity": metrics.image_image_similarity(gen, src),
        "text_similarity": metrics.text_image_similarity(txt, gen),
        "n_generated": int(gen.shape[0]),
        "n_source": int(src.shape[0]),
    }


def read_prompt_file(path: str | Path) -> list[tuple[str, str]]:
    """``(category, prompt)`` pairs from a file of ``category<TAB>prompt`` or bare ``prompt`` lines (category
    "all"); ``#`` lines are comments. Duplicate prompts are an error (each needs its own image folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    pairs: list[tuple[str, str]] = []
    for line in metrics.load_lines(path):
        category, _, prompt = line.rpartition("\t")
        pairs.append((category.strip() or "all", prompt.strip()))
    if not pairs:
        raise ValueError(f"--prompts {path}: no prompts in the file")
    seen: set[str] = set()
    dups = [p for _, p in pairs if p in seen or seen.add(p)]
    if dups:
        raise ValueError(f"--prompts {path}: duplicate prompts {dups[:3]}")
    return pairs


def collect_prompt_images(
    images_dir: str | Path, prompts: Sequence[str], skip_missing: bool = False
) -> dict[str, list[Path]]:
    """Image files of each prompt under ``images_dir``; a missing/empty folder is an error unless ``skip_missing``."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--images_dir {root}: no such folder; {LAYOUT_HELP}")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not subdirs:
        loose = list_images(root)
        what = f"{len(loose)} images directly inside it" if loose else "no sub-folders"
        raise FileNotFoundError(f"--images_dir {root}: wrong layout, found {what}; {LAYOUT_HELP}")
    found: dict[str, list[Path]] = {}
    problems: list[str] = []
    for prompt in prompts:
        folder = root / prompt
        files = list_images(folder) if folder.is_dir() else []
        if files:
            found[prompt] = files
        else:
            problems.append(f"'{folder}' {'has no images' if folder.is_dir() else 'is missing'}")
    if problems and not skip_missing:
        raise FileNotFoundError(
            f"--images_dir {root}: {len(problems)} of {len(prompts)} prompts have no images ({'; '.join(problems[:3])}"
            f"{' ...' if len(problems) > 3 else ''}); {LAYOUT_HELP}; image types: {', '.join(IMAGE_EXTENSIONS)}; "
            f"sub-folders present: {subdirs[:5]}{' ...' if len(subdirs) > 5 else ''}; pass --skip_missing to "
            "evaluate only the prompts that have images"
        )
    for problem in problems:
        logger.warning("skipping: %s", problem)
    return found


class TextEmbeddingCache:
    """Template-averaged text embeddings, computed once per distinct text."""

    def __init__(self, extractor: CLIPFeatureExtractor, templates: Sequence[str]) -> None:
        self.extractor = extractor
        self.templates = list(templates)
        self._cache: dict[str, Tensor] = {}

    def __call__(self, text: str) -> Tensor:
        if text not in self._cache:
            feats = self.extractor.encode_texts(metrics.format_templates(text, self.templates))  # [T, D]
            self._cache[text] = metrics.template_average(feats)  # [D]
        return self._cache[text]


def evaluate_prompt(image_features: Tensor, prompt: str, text_embedding: TextEmbeddingCache) -> dict | None:
    """A&E scores of one prompt from its ``[N, D]`` image features; ``None`` when the prompt cannot be split."""
    parts = metrics.split_prompt(prompt)
    if parts is None:
        return None
    if len(parts) > 2:
        logger.warning("prompt %r has %d parts; the minimum-object score uses all of them", prompt, len(parts))
    full = metrics.text_image_similarities(text_embedding(prompt), image_features)  # [N]
    per_part = torch.stack(
        [metrics.text_image_similarities(text_embedding(p), image_features) for p in parts]
    )  # [P, N]
    mins = metrics.min_object_similarities(per_part)  # [N]
    return {
        "n_images": int(image_features.shape[0]),
        "full_text": float(full.mean()),
        "parts": parts,
        "part_similarities": [float(s.mean()) for s in per_part],
        "min_object": float(mins.mean()),
        "per_image": {
            "full_text": full.tolist(),
            "parts": per_part.tolist(),
            "min_object": mins.tolist(),
        },
    }


def evaluate_prompt_set(
    extractor: CLIPFeatureExtractor,
    prompts: Sequence[tuple[str, str]],
    images: dict[str, list[Path]],
    templates: Sequence[str],
) -> tuple[dict[str, dict], list[str]]:
    """Per-prompt A&E scores for the prompts that have images; returns ``(results, skipped prompts)``."""
    text_embedding = TextEmbeddingCache(extractor, templates)
    results: dict[str, dict] = {}
    skipped: list[str] = []
    for category, prompt in tqdm(prompts, desc="CLIP scores", leave=False):
        if prompt not in images:
            continue
        if metrics.split_prompt(prompt) is None:
            logger.warning("cannot split %r at %s; skipped as in the reference", prompt, metrics.SEPARATORS)
            skipped.append(prompt)
            continue
        feats = extractor.encode_images(load_images(images[prompt]))  # [N, D]
        result = evaluate_prompt(feats, prompt, text_embedding)
        assert result is not None
        results[prompt] = {"category": category, "images": [p.name for p in images[prompt]], **result}
    if not results:
        raise ValueError("no prompt could be evaluated (none had images, or none could be split at ' and '/' with ')")
    return results, skipped


def aggregate(results: dict[str, dict]) -> dict[str, dict[str, float | int]]:
    """Mean over prompts of the full-prompt and minimum-object scores, per category and over ``all``."""
    groups: dict[str, list[dict]] = {}
    for res in results.values():
        groups.setdefault(res["category"], []).append(res)
    if len(groups) > 1 or "all" not in groups:
        groups["all"] = list(results.values())
    out: dict[str, dict[str, float | int]] = {}
    for name, items in groups.items():
        out[name] = {
            "n_prompts": len(items),
            "n_images": sum(r["n_images"] for r in items),
            "full_text": sum(r["full_text"] for r in items) / len(items),
            "min_object": sum(r["min_object"] for r in items) / len(items),
        }
    return out


def markdown_table(aggregates: dict[str, dict[str, dict[str, float | int]]]) -> str:
    """``| method | category | prompts | images | full prompt | min object |`` for ``{method: aggregate(...)}``."""
    lines = [
        "| method | category | prompts | images | full prompt | min object |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, by_cat in aggregates.items():
        for cat in sorted(by_cat, key=lambda c: (c == "all", c)):
            row = by_cat[cat]
            lines.append(
                f"| {method} | {cat} | {row['n_prompts']} | {row['n_images']} | "
                f"{float(row['full_text']):.4f} | {float(row['min_object']):.4f} |"
            )
    return "\n".join(lines) + "\n"
