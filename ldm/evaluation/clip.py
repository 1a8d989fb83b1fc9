"""CLIP feature extraction for the evaluation scripts.

The model is read from a local Hugging Face CLIP folder that the user provides (``--clip_model PATH``: ``config.json``,
``model.safetensors`` or ``pytorch_model.bin``, and the tokenizer files), through transformers' ``CLIPModel`` and
``CLIPTokenizer`` with ``local_files_only=True``. Nothing is ever downloaded.

Image preprocessing is CLIP's, written with kornia instead of torchvision (reference-spec 1.9, ``clip_eval.py``):
map the input range to [0, 1] -> bicubic resize of the short side to the model's image size -> centre crop ->
normalise with CLIP's mean/std.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from kornia.geometry.transform import resize
from torch import Tensor

logger = logging.getLogger(__name__)

#: CLIP's image normalisation (the values of the original ``clip`` package and of the HF preprocessor configs).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_IMAGE_SIZE = 224

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
FLAG = "--clip_model"
_HOW_TO = (
    f"pass {FLAG} a local Hugging Face CLIP folder holding config.json, model.safetensors (or pytorch_model.bin) and "
    "the tokenizer files (tokenizer.json, or vocab.json + merges.txt), e.g. the folder that "
    "`CLIPModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(DIR)` and "
    "`CLIPTokenizer.from_pretrained(...).save_pretrained(DIR)` write on a machine with network access"
)


def resolve_clip_folder(path: str | Path) -> Path:
    """Check that ``path`` is a complete local CLIP folder and return it.

    A Hugging Face hub cache folder (``models--openai--clip-vit-base-patch32``) with a single snapshot is accepted and
    resolved to that snapshot. Raises ``FileNotFoundError`` naming ``--clip_model`` and the missing file otherwise.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{FLAG} {path}: no such folder; {_HOW_TO}.")
    snapshots = folder / "snapshots"
    if not (folder / "config.json").is_file() and snapshots.is_dir():
        candidates = sorted(p for p in snapshots.iterdir() if (p / "config.json").is_file())
        if len(candidates) == 1:
            folder = candidates[0]
        elif len(candidates) > 1:
            raise FileNotFoundError(
                f"{FLAG} {path}: hub cache folder with {len(candidates)} snapshots; pass one of "
                f"{[str(c) for c in candidates]}."
            )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{FLAG} {path}: config.json is missing in {folder}; {_HOW_TO}.")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, OSError) as err:
        raise FileNotFoundError(f"{FLAG} {path}: cannot read {config_file} ({err}); {_HOW_TO}.") from err
    if model_type != "clip":
        raise FileNotFoundError(
            f"{FLAG} {path}: {config_file} describes a {model_type!r} model, not a CLIP model (model_type 'clip'); "
            f"{_HOW_TO}."
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{FLAG} {path}: no weights in {folder} (looked for {', '.join(WEIGHT_FILES)}); {_HOW_TO}."
        )
    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        raise FileNotFoundError(
            f"{FLAG} {path}: no tokenizer files in {folder} (need tokenizer.json, or vocab.json and merges.txt); "
            f"{_HOW_TO}."
        )
    return folder


def _read_preprocessor(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from ``preprocessor_config.json`` when the folder has one, CLIP's constants otherwise."""
    cfg_file = folder / "preprocessor_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        mean = tuple(float(v) for v in cfg.get("image_mean", CLIP_MEAN))
        std = tuple(float(v) for v in cfg.get("image_std", CLIP_STD))
        return mean, std
    return CLIP_MEAN, CLIP_STD


def _features(output: object) -> Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object (``pooler_output``) in 5."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output of type {type(output).__name__}")
    return pooled


def center_crop(images: Tensor, size: int) -> Tensor:
    """Centre crop ``[B, C, H, W]`` to ``[B, C, size, size]`` by slicing (offsets rounded as torchvision/CLIP do)."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {h}x{w} images to {size}x{size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def preprocess_images(
    images: Tensor,
    image_size: int = DEFAULT_IMAGE_SIZE,
    input_range: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    antialias: bool = False,
    clamp: bool = True,
) -> Tensor:
    """CLIP preprocessing of ``[B, 3, H, W]`` float images whose values lie in ``input_range``.

    Steps: ``(x - lo) / (hi - lo)`` to [0, 1]; bicubic resize of the short side to ``image_size`` (kornia,
    ``align_corners=False``; ``antialias=False`` matches the reference evaluator, which resized tensors); clamp to
    [0, 1] when ``clamp`` (what CLIP's PIL path does implicitly); centre crop; ``(x - mean) / std``.
    Returns ``[B, 3, image_size, image_size]``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to preprocess")
    lo, hi = input_range
    x = images.float()
    tol = 1e-3 * (hi - lo)
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - tol or x_max > hi + tol:
        raise ValueError(
            f"image values span [{x_min:.3f}, {x_max:.3f}], outside the declared input range [{lo}, {hi}]; "
            "pass input_range=(-1, 1) for model outputs / training tensors, (0, 1) for decoded images"
        )
    x = (x - lo) / (hi - lo)  # [B, 3, H, W] in [0, 1]
    x = resize(x, image_size, interpolation="bicubic", side="short", antialias=antialias)  # short side = image_size
    if clamp:
        x = x.clamp(0.0, 1.0)
    x = center_crop(x, image_size)  # [B, 3, S, S]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class CLIPFeatureExtractor:
    """CLIP image and text features (un-normalised projections; :mod:`ldm.evaluation.metrics` normalises)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        image_size: int = DEFAULT_IMAGE_SIZE,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        batch_size: int = 8,
        antialias: bool = False,
        text_batch_size: int = 80,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.batch_size = int(batch_size)
        self.antialias = antialias
        self.text_batch_size = int(text_batch_size)
        text_cfg = getattr(getattr(model, "config", None), "text_config", None)
        self.max_length = int(getattr(text_cfg, "max_position_embeddings", 77))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        antialias: bool = False,
    ) -> CLIPFeatureExtractor:
        """Load from a local folder (see :func:`resolve_clip_folder`); never touches the network."""
        from transformers import CLIPModel, CLIPTokenizer

        folder = resolve_clip_folder(path)
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        image_size = int(getattr(model.config.vision_config, "image_size", DEFAULT_IMAGE_SIZE))
        mean, std = _read_preprocessor(folder)
        logger.info("loaded CLIP from %s (image size %d)", folder, image_size)
        return cls(model, tokenizer, image_size, mean, std, batch_size=batch_size, antialias=antialias)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Tensor, input_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        return preprocess_images(images, self.image_size, input_range, self.mean, self.std, self.antialias)

    @torch.no_grad()
    def encode_images(self, images: Tensor | Sequence[Tensor], input_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """Image features ``[N, D]`` for a ``[N, 3, H, W]`` tensor or a list of ``[3, H_i, W_i]`` tensors."""
        if isinstance(images, Tensor):
            if images.ndim != 4:
                raise ValueError(f"expected images of shape [N, 3, H, W], got {list(images.shape)}")
            items: list[Tensor] = list(images)
        else:
            items = list(images)
        if not items:
            raise ValueError("no images to encode")
        # Images may differ in size: preprocess one by one, then run the model in batches.
        pixels = torch.cat([self.preprocess(img.unsqueeze(0), input_range) for img in items])  # [N, 3, S, S]
        feats = []
        for start in range(0, len(pixels), self.batch_size):
            batch = pixels[start : start + self.batch_size].to(self.device)
            feats.append(_features(self.model.get_image_features(pixel_values=batch)).float().cpu())
        return torch.cat(feats)  # [N, D]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Text features ``[T, D]``."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        feats = []
        for start in range(0, len(texts), self.text_batch_size):
            chunk = texts[start : start + self.text_batch_size]
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            out = self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
            feats.append(_features(out).float().cpu())
        return torch.cat(feats)  # [T, D]
