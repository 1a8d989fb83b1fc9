"""A deterministic detector for ToyWorld images: which coloured shapes does an image contain?

Pipeline (vectorised over a batch and over all components at once):
1. light smoothing, background colour = per-channel median of the border pixels;
2. foreground = pixels whose colour is far from the background;
3. 8-connected components by iterated 3x3 max-pooling of pixel labels (early stop when labels settle);
4. per component: area, bbox, centroid and mean colour via scatter ops; colour = nearest named hue (HSV, kornia);
5. shape from descriptors: fill ratio (area / bbox area), solidity (area / convex-hull area, the hull from the
   support function of the component's pixel squares in 64 directions), vertical centroid offset, width ratio.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.toyworld.scenes import COLOURS, DEFAULT_HELDOUT, GENERIC_WORD, NAMED_SHAPES

logger = logging.getLogger(__name__)

NUM_DIRECTIONS = 64  # directions of the support function over the full circle (even)

# Shape prototypes in descriptor space (fill, solidity, cy_offset, width_ratio): mean and spread per shape, measured
# on 1500 scenes (validation split, seed 99, sizes 8-13 px at 64x64) rendered clean and twice through `degrade`.
# The accuracy tests in tests/test_toyworld.py use other seeds and a different split.
PROTOTYPES: dict[str, tuple[tuple[float, float, float, float], tuple[float, float, float, float]]] = {
    "circle": ((0.785, 0.945, 0.0, 0.937), (0.022, 0.008, 0.009, 0.019)),
    "square": ((0.971, 0.984, 0.0, 0.734), (0.03, 0.018, 0.008, 0.026)),
    "triangle": ((0.59, 0.899, 0.135, 0.862), (0.028, 0.014, 0.014, 0.019)),
    "diamond": ((0.58, 0.926, 0.0, 0.79), (0.027, 0.012, 0.01, 0.025)),
    "star": ((0.547, 0.726, 0.047, 0.92), (0.04, 0.042, 0.01, 0.016)),
    "heart": ((0.676, 0.91, -0.086, 0.833), (0.024, 0.014, 0.012, 0.025)),
}
MIN_FEATURE_SPREAD = 0.012  # floor on the per-descriptor spread (pixelisation alone moves descriptors about this much)
REJECT_DISTANCE = 8.0  # scaled distance (in spreads) beyond which a component's shape is "unknown"


@dataclass
class Detection:
    """One detected object. ``bbox`` is (x0, y0, x1, y1) in pixels (exclusive max); ``centroid`` is (x, y)."""

    shape: str
    colour: str
    bbox: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]
    features: dict[str, float] = field(default_factory=dict, repr=False)
    shape_distance: float = 0.0


@dataclass(frozen=True)
class DetectorConfig:
    """Knobs of the detector (all have defaults)."""

    smooth_sigma: float = 0.7  # gaussian pre-smoothing, pixels (0 disables)
    fg_threshold: float = 0.3  # RGB distance from the background (0..sqrt(3)) that makes a pixel foreground
    min_area_frac: float = 0.008  # components smaller than this share of the image are dropped
    min_saturation: float = 0.25  # a component with a less saturated mean colour gets colour "unknown"
    shapes: tuple[str, ...] = (*NAMED_SHAPES, DEFAULT_HELDOUT)  # add "heart" when a world uses it
    colours: tuple[str, ...] = tuple(COLOURS)
    reject_distance: float = REJECT_DISTANCE

    def __post_init__(self) -> None:
        bad = [s for s in self.shapes if s not in PROTOTYPES]
        if bad:
            raise ValueError(f"DetectorConfig.shapes: no prototype for {bad}; known: {list(PROTOTYPES)}")
        bad = [c for c in self.colours if c not in COLOURS]
        if bad:
            raise ValueError(f"DetectorConfig.colours: unknown {bad}; known: {list(COLOURS)}")


def _to_batch(image: torch.Tensor | Image.Image | np.ndarray) -> torch.Tensor:
    """Any supported image -> float tensor [B, 3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None]
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"detect() takes a PIL image or a tensor [3,H,W]/[B,3,H,W] in [0,1], got {type(image)}")
    x = image.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image tensor [3,H,W] or [B,3,H,W], got shape {tuple(image.shape)}")
    if x.min() < -0.01 or x.max() > 1.01:
        raise ValueError("image values must be in [0, 1] (map [-1, 1] images with (x + 1) / 2 first)")
    return x.clamp(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of [B, C, H, W] with replicate borders, as sums of shifted slices (on CPU about twice
    as fast as a grouped convolution for these small kernels); weights from kornia."""
    radius = math.ceil(2 * sigma)
    weights = kornia.filters.get_gaussian_kernel1d(2 * radius + 1, sigma).flatten().tolist()
    h, w = x.shape[-2:]
    p = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = sum(wt * p[..., i : i + w] for i, wt in enumerate(weights))
    p = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return sum(wt * p[..., i : i + h, :] for i, wt in enumerate(weights))


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of [B, 1, H, W] with zero padding (separable; several times faster than max_pool2d on CPU)."""
    p = F.pad(x, (1, 1, 1, 1))
    row = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])  # [B, 1, H+2, W]
    return torch.maximum(torch.maximum(row[..., :-2, :], row[..., 1:-1, :]), row[..., 2:, :])


def _label_components(fg: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a mask [B, 1, H, W] (bool) -> [B, 1, H, W] int64, 0 = background.

    Each foreground pixel starts with a unique label (its flat index + 1); labels spread by 3x3 max filtering inside
    the mask, sped up by pointer jumping, until nothing changes: every component ends with the largest index it holds.
    """
    b, _, h, w = fg.shape
    fgf = fg.float()
    lab = (torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w) * fgf).expand(b, 1, h, w).contiguous()
    for _ in range(h * w):
        new = _max3x3(_max3x3(lab) * fgf) * fgf  # [B, 1, H, W]
        # pointer jumping: a label names a pixel of the same component whose label is >= it; take that label
        flat = new.view(b, h * w)
        jumped = flat.gather(1, (flat.long() - 1).clamp_min(0)) * fgf.view(b, h * w)
        new = torch.maximum(flat, jumped).view(b, 1, h, w)
        if torch.equal(new, lab):
            break
        lab = new
    return lab.long()


def _hull_area(h: torch.Tensor) -> torch.Tensor:
    """Area of the polygon cut out by the support lines ``n_j . p = h_j`` ([N, D] for D directions over 2*pi)."""
    d = h.shape[1]
    a = torch.arange(d, dtype=torch.float32) * (2 * math.pi / d)
    b = torch.roll(a, -1)
    hb = torch.roll(h, -1, dims=1)
    s = math.sin(2 * math.pi / d)
    # vertex where consecutive support lines meet (2x2 solve; det = sin(b - a))
    vx = (h * torch.sin(b) - hb * torch.sin(a)) / s  # [N, D]
    vy = (hb * torch.cos(a) - h * torch.cos(b)) / s
    # shoelace formula
    return 0.5 * (vx * torch.roll(vy, -1, dims=1) - torch.roll(vx, -1, dims=1) * vy).sum(1).abs()


def _features(
    comp: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Descriptors of ``n`` components from their pixels (component id, x, y: [P] each).

    Returns (features [n, 4] = fill, solidity, cy_offset, width_ratio; bbox [n, 4] = x0, y0, x1, y1 (pixel edges);
    area [n]; centroid [n, 2] = x, y).
    """
    area = torch.bincount(comp, minlength=n).float()  # [n]
    cx = torch.zeros(n).index_add_(0, comp, xs) / area
    cy = torch.zeros(n).index_add_(0, comp, ys) / area
    d = NUM_DIRECTIONS
    ang = torch.arange(d, dtype=torch.float32) * (2 * math.pi / d)
    cos, sin = torch.cos(ang), torch.sin(ang)  # [D]
    # support of each unit pixel square: centre projection + half its extent along the direction
    proj = xs[:, None] * cos + ys[:, None] * sin + 0.5 * (cos.abs() + sin.abs())  # [P, D]
    h = torch.full((n, d), -1e9).scatter_reduce(0, comp[:, None].expand(-1, d), proj, "amax")  # [n, D]
    hull = _hull_area(h)
    widths = h[:, : d // 2] + h[:, d // 2 :]  # [n, D/2] caliper widths
    q = d // 4
    x1, y1, x0, y0 = h[:, 0], h[:, q], -h[:, 2 * q], -h[:, 3 * q]
    bw, bh = x1 - x0, y1 - y0
    fill = area / (bw * bh)
    solidity = area / hull
    cy_off = (cy - 0.5 * (y0 + y1)) / bh
    width_ratio = widths.min(1).values / widths.max(1).values
    feats = torch.stack([fill, solidity, cy_off, width_ratio], 1)
    bbox = torch.stack([x0, y0, x1, y1], 1)
    return feats, bbox, area, torch.stack([cx, cy], 1)


def _classify_shapes(feats: torch.Tensor, cfg: DetectorConfig) -> tuple[list[str], torch.Tensor]:
    names = list(cfg.shapes)
    mean = torch.tensor([PROTOTYPES[s][0] for s in names])  # [S, 4]
    spread = torch.tensor([PROTOTYPES[s][1] for s in names]).clamp_min(MIN_FEATURE_SPREAD)  # [S, 4]
    dist = (((feats[:, None, :] - mean[None]) / spread[None]) ** 2).sum(-1).sqrt()  # [n, S] (diagonal Mahalanobis)
    best = dist.min(1)
    out = [names[i] if d <= cfg.reject_distance else "unknown" for i, d in zip(best.indices.tolist(), best.values)]
    return out, best.values


def _classify_colours(rgb: torch.Tensor, cfg: DetectorConfig) -> list[str]:
    """Mean colours [n, 3] in [0, 1] -> nearest named hue (circular distance), or "unknown" if unsaturated."""
    hsv = kornia.color.rgb_to_hsv(rgb[:, :, None, None])[:, :, 0, 0]  # [n, 3]; hue in radians [0, 2*pi)
    names = list(cfg.colours)
    ref = torch.tensor([COLOURS[c] for c in names], dtype=torch.float32) / 255.0
    ref_h = kornia.color.rgb_to_hsv(ref[:, :, None, None])[:, 0, 0, 0]  # [C]
    dh = (hsv[:, 0:1] - ref_h[None]).abs()
    dh = torch.minimum(dh, 2 * math.pi - dh)  # [n, C]
    idx = dh.argmin(1).tolist()
    return [names[i] if s >= cfg.min_saturation else "unknown" for i, s in zip(idx, hsv[:, 1].tolist())]


def detect_batch(images: torch.Tensor, config: DetectorConfig | None = None) -> list[list[Detection]]:
    """Detect objects in a batch [B, 3, H, W] in [0, 1]; one list of detections (sorted left to right) per image."""
    cfg = config or DetectorConfig()
    x = _to_batch(images)
    b, _, hgt, wid = x.shape
    if cfg.smooth_sigma > 0:
        x = _gaussian_blur(x, cfg.smooth_sigma)
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # [B, 3, 2H+2W]
    bg = border.median(dim=2).values[:, :, None, None]  # [B, 3, 1, 1]
    dist = ((x - bg) ** 2).sum(dim=1, keepdim=True).sqrt()  # [B, 1, H, W] (faster than .norm on CPU)
    fg = dist > cfg.fg_threshold
    labels = _label_components(fg)  # [B, 1, H, W]
    bi, _, yi, xi = torch.nonzero(labels, as_tuple=True)  # foreground pixels
    results: list[list[Detection]] = [[] for _ in range(b)]
    if bi.numel() == 0:
        return results
    key = bi * (hgt * wid + 1) + labels[bi, 0, yi, xi]
    uniq, comp = torch.unique(key, return_inverse=True)
    n = uniq.numel()
    area_all = torch.bincount(comp, minlength=n)
    keep = area_all >= cfg.min_area_frac * hgt * wid
    if not bool(keep.any()):
        return results
    # re-index the kept components 0..m-1 and drop the pixels of the others
    new_id = torch.cumsum(keep.long(), 0) - 1
    pix = keep[comp]
    comp, bi, yi, xi = new_id[comp[pix]], bi[pix], yi[pix], xi[pix]
    img_of = (uniq[keep] // (hgt * wid + 1)).tolist()
    m = int(keep.sum())
    feats, bbox, area, centroid = _features(comp, xi.float(), yi.float(), m)
    # mean colour, weighted towards the core (distance from background squared) to discount anti-aliased edges
    wgt = dist[bi, 0, yi, xi] ** 2  # [P]
    rgb = torch.zeros(m, 3).index_add_(0, comp, x[bi, :, yi, xi] * wgt[:, None])
    rgb = rgb / torch.zeros(m).index_add_(0, comp, wgt)[:, None]
    shapes, sdist = _classify_shapes(feats, cfg)
    colours = _classify_colours(rgb.clamp(0, 1), cfg)
    names = ("fill", "solidity", "cy_offset", "width_ratio")
    for j in range(m):
        bx = bbox[j].round().long().tolist()
        results[img_of[j]].append(
            Detection(
                shape=shapes[j],
                colour=colours[j],
                bbox=(bx[0], bx[1], bx[2], bx[3]),
                area=int(area[j]),
                centroid=(float(centroid[j, 0]), float(centroid[j, 1])),
                features=dict(zip(names, feats[j].tolist())),
                shape_distance=float(sdist[j]),
            )
        )
    for dets in results:
        dets.sort(key=lambda d: (d.centroid[0], d.centroid[1]))
    return results


def detect(image: torch.Tensor | Image.Image, config: DetectorConfig | None = None) -> list[Detection]:
    """Detect the objects of one image (tensor [3, H, W] in [0, 1], or a PIL image), sorted left to right."""
    x = _to_batch(image)
    if x.shape[0] != 1:
        raise ValueError(f"detect() takes one image; use detect_batch() for a batch of {x.shape[0]}")
    return detect_batch(x, config)[0]


def _matches(det: Detection, want: tuple[str | None, str | None]) -> bool:
    colour, shape = want
    shape_ok = shape in (None, GENERIC_WORD) or det.shape == shape
    colour_ok = colour is None or det.colour == colour
    return shape_ok and colour_ok


def scene_matches(
    detections: Sequence[Detection], wanted: Sequence[tuple[str | None, str | None]], exact: bool = False
) -> bool:
    """True if each wanted (colour, shape) is shown by a distinct detection. ``None`` (or the generic word as shape)
    matches anything. With ``exact``, the image must also contain no other objects."""
    if exact and len(detections) != len(wanted):
        return False
    if len(wanted) > len(detections):
        return False
    if len(detections) > 8:  # the assignment search below is exponential; scenes hold at most a handful of objects
        raise ValueError(f"too many detections ({len(detections)}) to match; is this a ToyWorld image?")
    return any(
        all(_matches(detections[i], w) for i, w in zip(perm, wanted))
        for perm in itertools.permutations(range(len(detections)), len(wanted))
    )


def parse_caption(
    caption: str, placeholders: dict[str, str | tuple[str, str]] | None = None
) -> list[tuple[str | None, str]]:
    """The (colour or None, shape) pairs a caption names, in order, e.g. "a red circle and a square" ->
    [("red", "circle"), (None, "square")]. The generic word yields shape "object"; ``placeholders`` maps tokens such
    as "*" to a shape (e.g. {"*": "star"}) or to a (colour, shape) pair (e.g. {"@": ("yellow", "diamond")}: a
    learned word whose concept has its own colour; a colour word before it is then ignored)."""
    placeholders = placeholders or {}
    shape_words = set(PROTOTYPES) | {GENERIC_WORD} | set(placeholders)
    tokens = re.findall(r"[a-z]+|[^\sa-z]", caption.lower())
    out: list[tuple[str | None, str]] = []
    for i, tok in enumerate(tokens):
        if tok in shape_words:
            colour = tokens[i - 1] if i > 0 and tokens[i - 1] in COLOURS else None
            meaning = placeholders.get(tok, tok)
            out.append(meaning if isinstance(meaning, tuple) else (colour, meaning))
    return out


def degrade(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    max_blur_sigma: float = 1.0,
    noise_std: tuple[float, float] = (0.03, 0.05),
    max_shift: float = 0.05,
    jpeg_quality: tuple[float, float] = (50.0, 90.0),
) -> torch.Tensor:
    """Degrade renders [B, 3, H, W] in [0, 1] the way generated images differ from them: gaussian blur
    (sigma up to ``max_blur_sigma`` px), JPEG-like softening (kornia's differentiable JPEG codec), per-channel colour
    and brightness shifts (up to ``max_shift`` each), then gaussian noise (std drawn from ``noise_std``)."""
    x = _to_batch(images)
    b = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    sigma = u(0.2, max_blur_sigma, b, 1).expand(b, 2).contiguous()  # [B, 2] (isotropic)
    k = 2 * math.ceil(2 * max_blur_sigma) + 1
    x = kornia.filters.gaussian_blur2d(x, (k, k), sigma, border_type="replicate")
    x = kornia.enhance.jpeg_codec_differentiable(x, u(*jpeg_quality, b)).clamp(0, 1)
    x = x + u(-max_shift, max_shift, b, 3, 1, 1) + u(-max_shift, max_shift, b, 1, 1, 1)  # colour + brightness shift
    x = x + torch.randn(x.shape, generator=generator) * u(*noise_std, b, 1, 1, 1)
    return x.clamp(0, 1)
