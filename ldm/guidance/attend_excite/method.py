"""Attend-and-Excite (Chefer et al. 2023, "Attend-and-Excite: Attention-Based Semantic Guidance for T2I Diffusion").

At the start of a sampling step the latent z_t is moved against the gradient of a loss on the cross-attention maps
of a conditional UNet pass, so that every subject token gets a strong activation somewhere in the image:

    A = softmax(100 * maps[:, :, 1:-1])                      per pixel over the kept text positions (Sec. 3.2)
    m_k = max_{pixels} Gaussian(A[:, :, k])                  per subject token k
    L = max_k max(0, 1 - m_k)                                (eq. 3: the most neglected token drives the step)
    z_t <- z_t - alpha_i * dL/dz_t,  alpha_i = scale_factor * sqrt(linspace(1, 0.5, N)[i])   (eq. 4)

At the threshold steps ("iterative refinement", Sec. 3.3) the update is repeated until L <= 1 - threshold (at most
``max_refinement_steps`` times), then the regular update of the step is applied on top. The loop is the guidance
package's shared one (``ldm/guidance/engine.py``, which lists what it does more cheaply than the reference); this
module holds A&E's loss and step size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.guidance.attend_excite.config import AttendExciteConfig, normalize_token_indices, step_size
from ldm.guidance.attend_excite.maps import attend_excite_loss, max_attention_per_token
from ldm.guidance.capture import CapturedMaps
from ldm.guidance.engine import AttentionLossGuidance, GroupLoss, LossGroup, SampleTarget, StepMaps

__all__ = ["AttendAndExcite"]


def token_targets(
    token_indices: Sequence[Sequence[int | Sequence[int]]] | None, eot_positions: Sequence[int | None] | None
) -> list[SampleTarget] | None:
    """Per-sample targets from ``--ae_tokens``-style positions (and end-of-text positions); None: the config's."""
    if token_indices is None:
        return None
    eots = list(eot_positions) if eot_positions is not None else [None] * len(token_indices)
    return [SampleTarget(normalize_token_indices(t), e) for t, e in zip(token_indices, eots)]


class AttendAndExcite(AttentionLossGuidance):
    """The A&E latent guidance (``LatentGuidance`` protocol), composed into any sampler.

    Args:
        model: the ``LatentDiffusion`` (its ``apply_model`` runs the guidance pass, so all its conditioning reaches
            the UNet), or a bare UNet called with the context tensor (unit tests, benchmarks).
        config: the knobs; step indices are absolute (see ``scale_schedule``).
        token_indices: per-sample token indices (a list with one entry per sample) overriding
            ``config.token_indices`` (prompts of a batch may differ).
        eot_positions: per-sample end-of-text positions, used with ``softmax_end="eot"``.
        truncate: stop the guidance pass after the last block at ``attention_res`` (False runs the whole UNet).
        on_maps: viewers: each step's smoothed token-group maps (see ``AttentionLossGuidance``).
    """

    def __init__(
        self,
        model: Any,
        config: AttendExciteConfig,
        token_indices: Sequence[Sequence[int | Sequence[int]]] | None = None,
        eot_positions: Sequence[int | None] | None = None,
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        super().__init__(model, config, token_targets(token_indices, eot_positions), truncate=truncate, on_maps=on_maps)
        self.eot_positions = None if eot_positions is None else list(eot_positions)

    def default_target(self) -> SampleTarget:
        eot = self.eot_positions[0] if self.eot_positions else None
        return SampleTarget(self.config.token_indices, eot)

    def check_group(self, group: LossGroup, num_tokens: int) -> None:
        end = num_tokens - 1 if self.config.softmax_end == "last" or group.eot is None else group.eot
        for token in group.token_groups:
            for p in token:
                if not 1 <= p < end:
                    raise ValueError(
                        f"A&E token index {p} is outside 1..{end - 1}, the positions the softmax keeps "
                        "(0 is the start token)"
                    )

    def group_loss(self, maps: CapturedMaps, group: LossGroup, step: int) -> GroupLoss:
        scores = max_attention_per_token(maps.cross[self.config.attention_res], group.token_groups, self.config,
                                         group.eot)  # fmt: skip  # [K] m_k
        return GroupLoss(attend_excite_loss(scores), scores)

    def step_size(self, step: int, num_steps: int) -> float:
        return step_size(self.config, step, num_steps)

    def record_scores(self, scores: torch.Tensor | None) -> dict:
        return {} if scores is None else {"max_att": scores.tolist()}
