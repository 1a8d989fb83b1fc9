"""The Divide & Bind losses (Li et al., BMVC 2023, "Divide & Bind Your Attention for Improved Generative Semantic
Nursing"), as pure functions of the aggregated cross-attention maps.

Notation: A_s is subject s's attention map ``[r, r]`` (softmax over the text positions, Gaussian smoothing, as in
Attend-and-Excite), A_a the map of its attribute a (e.g. "red" for "cat").

- Attendance ("divide", Sec. 3.1): the total variation of a subject's map is large when its attention is split into
  well-separated, high-contrast regions, so TV(A_s) is maximised:
      TV(A) = mean_{i,j} |A[i, j+1] - A[i, j]| + mean_{i,j} |A[i+1, j] - A[i, j]|
  (means, not sums, as the official code takes them). The official code's vertical term compares every row with the
  *last* row (``A[-1:, :]`` against ``A[1:, :]``) instead of with its neighbour; ``tv_last_row`` keeps that (the
  default, to match the official outputs) or uses neighbouring rows (the paper's TV).
- Binding (Sec. 3.2): the Jensen-Shannon divergence between the subject's and its attribute's maps, each made a
  distribution over the pixels:
      JSD(P || Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q) / 2
  with the official code's preparation of P and Q (``binding_distributions``).
- Per subject l_s = -TV(A_s) + w_i * JSD_s (the JSD term only for a subject with an attribute; w_i the step-dependent
  weight), and the loss is the worst subject's, as in Attend-and-Excite:  L = max_s l_s.
- Iterative refinement compares min_s TV(A_s) (the attendance alone) with the step's threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ldm.guidance.smoothing import smooth_maps

__all__ = [
    "binding_distributions",
    "binding_weight",
    "divide_bind_loss",
    "group_maps",
    "jensen_shannon",
    "resize_nearest",
    "text_softmax",
    "total_variation",
]


def text_softmax(maps: torch.Tensor, scale: float, end: int = -1) -> torch.Tensor:
    """Softmax over the text positions ``1..end-1`` of ``scale * maps`` per pixel: ``[r, r, N] -> [r, r, n]``.

    Position p of the prompt is column ``p - 1`` of the result (the start token is dropped).
    """
    return torch.softmax(maps.float()[:, :, 1:end] * scale, dim=-1)


def group_maps(
    maps: torch.Tensor,
    groups: Sequence[Sequence[int]],
    scale: float = 100.0,
    end: int = -1,
    smooth: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
) -> torch.Tensor:
    """The smoothed map of each token group from an aggregated map ``[r, r, N]``: ``[K, r, r]``.

    A_p = Gaussian(softmax(scale * maps[:, :, 1:end])[:, :, p - 1]) per position p (Attend-and-Excite's maps and
    kernel); a group of several positions (a word split into sub-tokens, a multi-vector placeholder) takes the
    pixelwise max over its positions.
    """
    attn = text_softmax(maps, scale, end)  # [r, r, n]
    selected = attn[:, :, [p - 1 for g in groups for p in g]].permute(2, 0, 1)  # [P, r, r]
    if smooth:
        selected = smooth_maps(selected, kernel_size, sigma)
    return torch.stack([part.max(dim=0).values for part in selected.split([len(g) for g in groups])])  # [K, r, r]


def resize_nearest(maps: torch.Tensor, res: int) -> torch.Tensor:
    """Nearest-neighbour resize of maps ``[..., R, R, N]`` to ``[..., res, res, N]`` (torch's ``nearest``: pixel
    ``floor(i * R / res)``, i.e. every (R/res)-th pixel when shrinking)."""
    if maps.shape[-2] == res:
        return maps
    lead = maps.shape[:-3]
    x = maps.reshape(-1, *maps.shape[-3:]).permute(0, 3, 1, 2)  # [b, N, R, R]
    x = F.interpolate(x, size=(res, res), mode="nearest")
    return x.permute(0, 2, 3, 1).reshape(*lead, res, res, maps.shape[-1])


def total_variation(maps: torch.Tensor, last_row: bool = True) -> torch.Tensor:
    """TV of each map ``[K, r, r] -> [K]``: mean absolute horizontal plus vertical difference (Sec. 3.1).

    ``last_row``: the vertical term is mean_{i>=1} |A[r-1, j] - A[i, j]| as the official code computes it (its slice
    ``A[-1:, :]`` where ``A[:-1, :]`` was meant); False: mean |A[i+1, j] - A[i, j]| (neighbouring rows).
    """
    horizontal = (maps[:, :, :-1] - maps[:, :, 1:]).abs().mean(dim=(1, 2))
    upper = maps[:, -1:, :] if last_row else maps[:, :-1, :]  # [K, 1 | r-1, r]
    vertical = (upper - maps[:, 1:, :]).abs().mean(dim=(1, 2))
    return horizontal + vertical


def binding_distributions(
    subject: torch.Tensor,
    attribute: torch.Tensor,
    tv: float,
    quantile: float = 0.2,
    quantile_low_tv: float = 0.3,
    low_tv: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P and Q for the binding term from a subject's and its attribute's smoothed maps ``[r, r]`` (flattened
    ``[r*r]``), as the official code prepares them:

        A_a' = A_a / max(A_a) * max(A_s)                     the attribute map on the subject's scale
        P = softmax(A_s), Q = softmax(A_a')                  over the pixels
        tau = q * max(P), q = quantile_low_tv if TV(A_s) < low_tv else quantile
        P' = relu(P - tau) + eps, Q' = relu(Q - tau) + eps   (both cut at the subject's tau; not renormalised)
    """
    subject, attribute = subject.reshape(-1), attribute.reshape(-1)
    attribute = attribute / attribute.max() * subject.max()
    p, q = torch.softmax(subject, dim=0), torch.softmax(attribute, dim=0)
    tau = (quantile_low_tv if tv < low_tv else quantile) * p.max()
    return F.relu(p - tau) + eps, F.relu(q - tau) + eps


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD(P || Q) = 1/2 sum P (log P - log M) + 1/2 sum Q (log Q - log M), M = (P + Q) / 2 (Sec. 3.2, eq. 4)."""
    log_m = (0.5 * (p + q)).log()
    return 0.5 * ((p * (p.log() - log_m)).sum() + (q * (q.log() - log_m)).sum())


def binding_weight(weights: Mapping[int, float], step: int) -> float:
    """The binding term's weight at ``step``: the value of the largest key <= step (``{0: 1, 10: 5, 20: 10}``:
    1 for steps 0-9, 5 for 10-19, 10 from 20 on); 0 before the first key."""
    keys = [k for k in weights if k <= step]
    return float(weights[max(keys)]) if keys else 0.0


def divide_bind_loss(
    subjects: torch.Tensor,
    attributes: Sequence[torch.Tensor | None],
    weight: float,
    last_row: bool = True,
    quantile: float = 0.2,
    quantile_low_tv: float = 0.3,
    low_tv: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = max_s (-TV(A_s) + w * JSD(P_s || Q_s)) from the subjects' smoothed maps ``[K, r, r]`` and, per subject,
    its attribute's smoothed map ``[r, r]`` or None (no binding term for that subject).

    Returns ``(L, tv)`` with ``tv`` ``[K]`` (detached; min(tv) is the refinement indicator).
    """
    tv = total_variation(subjects, last_row)  # [K]
    per_subject = []
    for k, attribute in enumerate(attributes):
        loss_k = -tv[k]
        if attribute is not None:
            p, q = binding_distributions(subjects[k], attribute, tv[k].item(), quantile, quantile_low_tv, low_tv, eps)
            loss_k = loss_k + weight * jensen_shannon(p, q)
        per_subject.append(loss_k)
    return torch.stack(per_subject).max(), tv.detach()
