"""INITNO's loss terms (Guo et al., CVPR 2024, "InitNO: Boosting Text-to-Image Diffusion Models via Initial Noise
Optimization") on one sample's aggregated attention maps. Pure functions; the loops are in ``noise.py`` and
``method.py``.

Notation: ``A = softmax(100 * maps[:, :, 1:end])`` the cross-attention maps over the kept text positions (as in
Attend-and-Excite), ``A_k`` subject token k's map after the Gaussian smoothing (a group of positions: the max over
them), ``p_k = argmax A_k`` its peak, ``S`` the self-attention maps ``[r, r, r*r]``.

Paper terms:
- cross-attention response score   L_ca = max_k max(0, 1 - A_k[p_k])
- self-attention conflict score    L_sa = mean over pairs k < l of  sum(min(S_k, S_l)) / (sum(S_k + S_l) + 1e-6),
  with ``S_k = Gaussian(S[p_k].view(r, r))`` the smoothed self-attention map of token k's peak pixel
- distribution alignment (KL)      L_kl = KL(N(mu, sigma^2) || N(0, 1)) = -1/2 mean(1 + log sigma^2 - mu^2 - sigma^2)

Terms only the official code has (xiefan-guo/initno ``pipeline_sd_initno.py``; the paper does not write them):
- "clean" term: per token, Otsu's threshold splits ``A_k`` (on ``floor(255 A_k)``, OpenCV's algorithm); the
  4-connected above-threshold region around ``p_k`` is the object, everything else background; when the background's
  maximum exceeds the object's minimum, that maximum is added (summed over tokens). Weight 1 while optimising the
  noise, 0.1 during sampling.
- alignment term (sampling only): ``sum_k mean|A_k - C_k|`` against an exponential moving average C of the
  (unsmoothed) maps A of the earlier guidance passes (``C <- 0.9 C + 0.1 A`` before each pass's loss; the first pass
  sets C = A), smoothed like A_k. Weight 0.1.
The noise optimisation ignores L_sa while L_ca > 0.5 (``self_gate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ldm.guidance.smoothing import smooth_maps
from ldm.guidance.tokens import TokenGroup

__all__ = [
    "FLT_EPSILON",
    "InitNOTerms",
    "alignment_loss",
    "clean_loss",
    "conflict_loss",
    "initno_terms",
    "kl_divergence",
    "otsu_threshold",
    "peak_region",
    "response_loss",
    "text_softmax",
    "token_maps",
    "update_cache",
]

FLT_EPSILON = 1.1920928955078125e-07  # C's FLT_EPSILON, as OpenCV's Otsu uses it


@dataclass
class InitNOTerms:
    """The terms of one sample's loss (0-dim tensors in the autograd graph; ``alignment`` None without a cache)."""

    cross: torch.Tensor  # L_ca
    conflict: torch.Tensor  # L_sa
    clean: torch.Tensor
    scores: torch.Tensor  # [K] A_k[p_k], each token's peak value
    alignment: torch.Tensor | None = None


def text_softmax(maps: torch.Tensor, softmax_scale: float, end: int = -1) -> torch.Tensor:
    """``A = softmax(softmax_scale * maps[:, :, 1:end])`` over the text positions: ``[r, r, 77] -> [r, r, n]``."""
    return torch.softmax(maps.float()[:, :, 1:end] * softmax_scale, dim=-1)


def token_maps(
    attn: torch.Tensor, groups: Sequence[TokenGroup], smooth: bool, kernel_size: int, sigma: float
) -> torch.Tensor:
    """``A_k`` ``[K, r, r]`` from ``attn`` ``[r, r, n]`` (position p is column p - 1): each position smoothed with the
    reference Gaussian, the max over a group's positions."""
    positions = [p - 1 for group in groups for p in group]
    selected = attn[:, :, positions].permute(2, 0, 1)  # [P, r, r]
    if smooth:
        selected = smooth_maps(selected, kernel_size, sigma)
    sizes = [len(g) for g in groups]
    return torch.stack([part.max(dim=0).values for part in selected.split(sizes)])  # [K, r, r]


def peaks(maps: torch.Tensor) -> list[tuple[int, int]]:
    """Each map's highest pixel ``(row, col)`` (``topk(1)`` of the detached map, as the official code takes it)."""
    side = maps.shape[-1]
    flat = maps.detach().flatten(1).topk(1, dim=1).indices[:, 0]  # [K]
    return [(int(i) // side, int(i) % side) for i in flat]


def response_loss(scores: torch.Tensor) -> torch.Tensor:
    """L_ca = max_k max(0, 1 - A_k[p_k]) from the peak values ``[K]``."""
    return (1.0 - scores).clamp_min(0.0).max()


def conflict_loss(
    self_maps: torch.Tensor, coords: Sequence[tuple[int, int]], smooth: bool, kernel_size: int, sigma: float
) -> torch.Tensor:
    """L_sa from the self-attention maps ``[r, r, r*r]`` at the tokens' peaks; 0 with fewer than two tokens."""
    side = self_maps.shape[0]
    rows = torch.stack([self_maps[y, x].reshape(side, side) for y, x in coords])  # [K, r, r]
    if smooth:
        rows = smooth_maps(rows, kernel_size, sigma)
    pairs = [(k, m) for k in range(len(coords)) for m in range(k + 1, len(coords))]
    if not pairs:
        return self_maps.new_zeros(())
    overlaps = [torch.minimum(rows[k], rows[m]).sum() / ((rows[k] + rows[m]).sum() + 1e-6) for k, m in pairs]
    return torch.stack(overlaps).mean()


def otsu_threshold(levels: torch.Tensor) -> int:
    """Otsu's threshold of integer levels (OpenCV ``threshold(..., THRESH_OTSU)``, same recursion in doubles).

    Returns the level that maximises the between-class variance (the first one on ties); 0 when every level is equal.
    """
    values = levels.flatten().tolist()
    count = len(values)
    hist = [0] * (max(values) + 1)
    for v in values:
        hist[v] += 1
    scale = 1.0 / count
    mu = sum(i * float(h) for i, h in enumerate(hist)) * scale
    mu1 = q1 = 0.0
    best_sigma = best = 0.0
    for i, h in enumerate(hist):
        p_i = h * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < FLT_EPSILON or max(q1, q2) > 1.0 - FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > best_sigma:
            best_sigma, best = sigma, i
    return int(best)


def peak_region(token_map: torch.Tensor, peak: tuple[int, int]) -> torch.Tensor:
    """The object mask ``[r, r]`` (0/1, the map's dtype): Otsu's threshold on ``floor(255 A_k)``, then the 4-connected
    region of pixels at or above it that contains the peak (empty if the peak is below it)."""
    levels = (token_map.detach() * 255).to(torch.int64)  # truncation, like numpy's astype(uint16)
    above = (token_map.detach() >= otsu_threshold(levels) / 255.0).tolist()
    rows, cols = len(above), len(above[0])
    mask = torch.zeros_like(token_map)
    todo = [peak] if above[peak[0]][peak[1]] else []
    seen = set(todo)
    while todo:
        y, x = todo.pop()
        mask[y, x] = 1
        for ny, nx in ((y, x + 1), (y, x - 1), (y + 1, x), (y - 1, x)):
            if 0 <= ny < rows and 0 <= nx < cols and above[ny][nx] and (ny, nx) not in seen:
                seen.add((ny, nx))
                todo.append((ny, nx))
    return mask


def clean_loss(maps: torch.Tensor, coords: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The official code's clean term: sum over tokens of the background maximum where it exceeds the object's
    minimum (``maps`` ``[K, r, r]``)."""
    total = maps.new_zeros(())
    for token_map, peak in zip(maps, coords):
        mask = peak_region(token_map, peak)
        inside = token_map * mask + (1 - mask)  # the object's values, 1 elsewhere
        outside = token_map * (1 - mask)  # the background's values, 0 on the object
        top = outside.max()
        total = total + (top if top > inside.min() else top * 0)
    return total


def update_cache(cache: torch.Tensor | None, attn: torch.Tensor, decay: float) -> torch.Tensor:
    """The alignment term's moving average ``C <- decay C + (1 - decay) A`` of the (detached) maps ``[r, r, n]``."""
    attn = attn.detach()
    return attn.clone() if cache is None else cache * decay + attn * (1 - decay)


def alignment_loss(maps: torch.Tensor, cache_maps: torch.Tensor) -> torch.Tensor:
    """sum_k mean|A_k - C_k| over the tokens' (smoothed) maps ``[K, r, r]``."""
    return sum((torch.nn.functional.l1_loss(m, c) for m, c in zip(maps, cache_maps)), maps.new_zeros(()))


def kl_divergence(log_var: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """L_kl = -1/2 mean(1 + log sigma^2 - mu^2 - sigma^2) of N(mu, sigma^2) against N(0, 1) (over all elements)."""
    return -0.5 * torch.mean(1 + log_var - mu**2 - log_var.exp())


def initno_terms(
    cross_maps: torch.Tensor,
    self_maps: torch.Tensor,
    groups: Sequence[TokenGroup],
    config,
    eot: int | None = None,
    cache: torch.Tensor | None = None,
) -> InitNOTerms:
    """The terms from one sample's maps: ``cross_maps`` ``[r, r, 77]``, ``self_maps`` ``[r, r, r*r]``.

    ``config`` gives ``softmax_scale``, ``softmax_end``, ``smooth_attentions``, ``kernel_size`` and ``sigma``;
    ``cache`` (the moving average, already updated with this pass's maps, ``[r, r, n]``) adds the alignment term.
    """
    end = -1 if config.softmax_end == "last" or eot is None else eot
    attn = text_softmax(cross_maps, config.softmax_scale, end)  # [r, r, n]
    smooth = (config.smooth_attentions, config.kernel_size, config.sigma)
    maps = token_maps(attn, groups, *smooth)  # [K, r, r]
    coords = peaks(maps)
    scores = torch.stack([m[y, x] for m, (y, x) in zip(maps, coords)])  # [K]
    terms = InitNOTerms(
        cross=response_loss(scores),
        conflict=conflict_loss(self_maps, coords, *smooth),
        clean=clean_loss(maps, coords),
        scores=scores,
    )
    if cache is not None:
        terms.alignment = alignment_loss(maps, token_maps(cache, groups, *smooth))
    return terms
