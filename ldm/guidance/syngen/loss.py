"""The SynGen loss (Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models", Sec. 3): pure functions of
one sample's aggregated cross-attention maps.

Every map is read as a distribution over the pixels (a position's r x r map, normalised to sum 1). For a noun n with
modifiers M(n) and the prompt positions U outside the phrase (all prompt words but the phrase's own, function words
included; start and end token excluded):

    dist(P, Q)     = (KL(P || Q) + KL(Q || P)) / 2                                   symmetric KL
    L_pos(m, n)    = dist(A_m, A_n)                                                  pull the pair together
    L_neg(m, n)    = -1 / (2 |U|) * sum_{u in U} [dist(A_m, A_u) + dist(A_n, A_u)]  push both from the rest
    L              = sum_n sum_{m in M(n)} L_pos(m, n) + L_neg(m, n)

A word of several positions (a word split into sub-tokens, a multi-vector placeholder) takes the largest distance over
its positions (over position pairs in L_pos). A noun without modifiers contributes only
``-1/|U| sum_u dist(A_n, A_u)`` when entities are included (the official ``include_entities``). As in the official code
(torch's Categorical), log-probabilities are taken of the probabilities clamped to [eps, 1 - eps] (float32 eps).
The official x100 before the normalisation cancels and is not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TokenGroup = tuple[int, ...]


@dataclass(frozen=True)
class Binding:
    """One noun and its modifiers as prompt positions (each a group: the positions of one word)."""

    noun: TokenGroup
    modifiers: tuple[TokenGroup, ...] = ()

    @property
    def positions(self) -> set[int]:
        return {p for group in (self.noun, *self.modifiers) for p in group}


def pixel_distributions(maps: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Each position's map as a distribution over pixels: ``[r, r, T]`` -> ``[len(positions), r*r]`` (float32)."""
    selected = maps.float()[:, :, list(positions)].flatten(0, 1).T  # [P, r*r]
    return selected / selected.sum(dim=-1, keepdim=True)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """dist(P, Q) = (KL(P||Q) + KL(Q||P)) / 2 over the last axis (broadcast over the others)."""
    eps = torch.finfo(p.dtype).eps
    log_p, log_q = p.clamp(eps, 1 - eps).log(), q.clamp(eps, 1 - eps).log()
    return ((p * (log_p - log_q)).sum(-1) + (q * (log_q - log_p)).sum(-1)) / 2


def pairwise_distances(dist: torch.Tensor) -> torch.Tensor:
    """dist(P_i, P_j) for every pair of rows of ``[P, N]``: ``[P, P]``."""
    return symmetric_kl(dist[:, None, :], dist[None, :, :])


def binding_loss(maps: torch.Tensor, bindings: Sequence[Binding], prompt_positions: Sequence[int]) -> torch.Tensor:
    """The SynGen loss L of one sample (module docstring).

    Args:
        maps: the aggregated cross-attention maps ``[r, r, 77]`` (mean over heads and layers) of one sample.
        bindings: the nouns with their modifiers; a binding without modifiers adds only its noun's L_neg term.
        prompt_positions: the prompt's positions (1 .. end-1): the candidates for U.
    Returns a 0-dim tensor (0 when there are no bindings).
    """
    positions = list(prompt_positions)
    index = {p: i for i, p in enumerate(positions)}
    missing = sorted({p for b in bindings for p in b.positions} - set(index))
    if missing:
        raise ValueError(f"SynGen binding positions {missing} are not prompt positions {positions}")
    d = pairwise_distances(pixel_distributions(maps, positions))  # [P, P]

    def group_dist(a: TokenGroup, b: TokenGroup) -> torch.Tensor:
        return d[[index[p] for p in a]][:, [index[p] for p in b]].max()

    def push(group: TokenGroup, outside: list[int]) -> torch.Tensor:
        """-1/|U| sum_u max_{i in group} dist(A_i, A_u)."""
        if not outside:
            return d.new_zeros(())
        rows = d[[index[p] for p in group]][:, [index[u] for u in outside]]  # [|group|, |U|]
        return -rows.max(dim=0).values.sum() / len(outside)

    loss = d.new_zeros(())
    for b in bindings:
        outside = [p for p in positions if p not in b.positions]  # U
        noun_push = push(b.noun, outside)
        if not b.modifiers:
            loss = loss + noun_push
            continue
        for m in b.modifiers:
            loss = loss + group_dist(m, b.noun) + (push(m, outside) + noun_push) / 2  # L_pos + L_neg
    return loss
