"""The CONFORM loss (Meral et al., CVPR 2024, "CONFORM: Contrast is All You Need for High-Fidelity T2I Diffusion").

CONFORM treats each subject token's (smoothed) cross-attention map as an embedding and applies a contrastive
objective to them (the paper's Sec. 3, "contrastive objective"):

- an object and its attributes form one group ("red cat", "blue frog"): the maps of one group are positives of each
  other, the maps of different groups are negatives;
- the same token's map at the previous denoising step is one more positive (the memory: the maps of step t+1 join
  those of step t with the same group labels);
- similarity is the cosine of the flattened maps, divided by a temperature tau.

For an anchor map a and one of its positives p, with N(a) the maps of the other groups (both steps):

    l(a, p) = -log( exp(s_ap / tau) / (exp(s_ap / tau) + sum_{n in N(a)} exp(s_an / tau)) ),  s = cos(A_a, A_p)
    L = mean over all ordered positive pairs (a, p), a != p, of l(a, p)                       (InfoNCE / NT-Xent)

The denominator holds the pair's own positive and the anchor's negatives only (not the anchor's other positives),
as in the official implementation; with no positive or no negative pair the loss is 0 (no update).

Maps (per position k, from one aggregated map ``[r, r, 77]``): positions 1..75 are kept (start token and the last
position dropped), optionally ``softmax(softmax_scale * maps)`` over them, then the reference Gaussian smoothing,
then optionally ``softmax(softmax_scale * map)`` over the pixels of each map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ldm.guidance.smoothing import smooth_maps

TokenGroups = Sequence[Sequence[int]]  # per group, the token positions (1-based in the 77-token sequence)


def group_embeddings(
    maps: torch.Tensor,
    groups: TokenGroups,
    *,
    softmax_normalize: bool = False,
    spatial_softmax: bool = False,
    softmax_scale: float = 100.0,
    smooth_attentions: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding of every grouped position and its group label: ``([P, r*r], [P])`` from ``maps`` ``[r, r, 77]``.

    A position listed in two groups is an error (the caller resolves groups; see ``groups.py``).
    """
    positions = [int(p) for group in groups for p in group]
    labels = [g for g, group in enumerate(groups) for _ in group]
    if len(set(positions)) != len(positions):
        raise ValueError(f"CONFORM groups list a token position twice: {[list(g) for g in groups]}")
    text = maps.float()[:, :, 1:-1]  # [r, r, 75]: the start token and the last position are dropped
    if softmax_normalize:
        text = torch.softmax(text * softmax_scale, dim=-1)  # per pixel, over the kept text positions
    selected = text[:, :, [p - 1 for p in positions]].permute(2, 0, 1)  # [P, r, r]
    if smooth_attentions:
        selected = smooth_maps(selected, kernel_size, sigma)
    flat = selected.flatten(1)  # [P, r*r]
    if spatial_softmax:
        flat = torch.softmax(flat * softmax_scale, dim=1)  # each map over its pixels
    return flat, torch.tensor(labels, device=maps.device)


def info_nce_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """L = mean_{(a,p)} -log(e^{s_ap/tau} / (e^{s_ap/tau} + sum_{n in N(a)} e^{s_an/tau})) over ordered positives.

    ``embeddings`` ``[E, D]``, ``labels`` ``[E]``; s is the cosine similarity. 0 (still a graph node, so callers may
    differentiate it) when there is no positive or no negative pair.
    """
    unit = F.normalize(embeddings, p=2, dim=1)  # [E, D]
    logits = unit @ unit.T / temperature  # [E, E]: s_ij / tau
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    if not positive.any() or not negative.any():
        return (embeddings * 0).sum()
    anchor, other = positive.nonzero(as_tuple=True)  # every ordered positive pair (a, p)
    neg_logits = logits[anchor].masked_fill(~negative[anchor], float("-inf"))  # [n_pairs, E]: s_an / tau, n in N(a)
    pos_logits = logits[anchor, other]  # [n_pairs]
    denominator = torch.logsumexp(torch.cat([pos_logits[:, None], neg_logits], dim=1), dim=1)
    return (denominator - pos_logits).mean()


def conform_loss(
    maps: torch.Tensor,
    previous_maps: torch.Tensor | None,
    groups: TokenGroups,
    *,
    temperature: float = 0.5,
    **embedding_options,
) -> torch.Tensor:
    """The CONFORM loss of one sample from its maps ``[r, r, 77]`` and the previous step's maps (or None).

    ``embedding_options`` are :func:`group_embeddings`'s keyword arguments. The previous maps enter as constants
    (positives of the same token and its group, negatives of the other groups).
    """
    embeddings, labels = group_embeddings(maps, groups, **embedding_options)
    if previous_maps is not None:
        previous, previous_labels = group_embeddings(previous_maps.detach(), groups, **embedding_options)
        embeddings = torch.cat([embeddings, previous])
        labels = torch.cat([labels, previous_labels])
    return info_nce_loss(embeddings, labels, temperature)
