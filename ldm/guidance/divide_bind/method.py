"""Divide & Bind (Li et al., BMVC 2023) on the shared attention-loss loop.

At the guided steps the latent moves against the gradient of the Divide & Bind loss (``loss.py``) on the
cross-attention maps of a conditional pass, with Attend-and-Excite's update and schedule:

    z_t <- z_t - alpha_i * dL/dz_t,   alpha_i = scale_factor * sqrt(linspace(1, 0.5, N)[i])
    L = max_s (-TV(A_s) + w_i * JSD(P_s || Q_s))

At the threshold steps the update repeats while min_s TV(A_s) is below the step's threshold (at most
``max_refinement_steps`` times, ``max_refinement_steps_init_step`` at step 0), then the regular update is applied on
top (``ldm/guidance/engine.py``). Subjects are read at ``attention_res``; their attributes at the larger sides
(``attribute_res``), resized to ``attention_res`` as the official code does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ldm.guidance.capture import CapturedMaps, CaptureSpec, new_store
from ldm.guidance.divide_bind.config import DivideBindConfig
from ldm.guidance.divide_bind.loss import binding_weight, divide_bind_loss, group_maps, resize_nearest
from ldm.guidance.engine import AttentionLossGuidance, GroupLoss, LossGroup, SampleTarget, StepMaps
from ldm.guidance.tokens import TokenGroup

__all__ = ["DivideAndBind"]


class DivideAndBind(AttentionLossGuidance):
    """The Divide & Bind latent guidance (``LatentGuidance`` protocol).

    Args:
        model: the ``LatentDiffusion`` (or a bare UNet in unit tests).
        config: the knobs; step indices absolute (``scale_schedule``).
        targets: per sample, a :class:`SampleTarget` whose ``token_groups`` are the subjects and whose
            ``extras["attributes"]`` holds, per subject, its attribute's positions or None. None: the config's
            ``token_indices`` without attributes for every sample.
        truncate, on_maps: as :class:`AttentionLossGuidance`.
    """

    def __init__(
        self,
        model: Any,
        config: DivideBindConfig,
        targets: Sequence[SampleTarget] | None = None,
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        self._attribute_sides: tuple[int, ...] = ()
        super().__init__(model, config, targets, truncate=truncate, on_maps=on_maps)

    # --- maps ------------------------------------------------------------------------------------------------------
    @property
    def capture_spec(self) -> CaptureSpec:
        return CaptureSpec(cross=(self.config.attention_res, *self._attribute_sides))

    def _uses_attributes(self, batch: int) -> bool:
        return any(a is not None for b in range(batch) for a in self.target_of(b).extras.get("attributes", ()))

    def _set_sides(self, latent_hw: tuple[int, int], batch: int) -> None:
        """The attribute sides for this latent size (only when some subject has an attribute)."""
        sides: tuple[int, ...] = ()
        if self._uses_attributes(batch):
            if self.config.attribute_res is not None:
                sides = (self.config.attribute_res,)
            else:
                h = latent_hw[0]
                available = {h // ds for ds in self.unet.attention_block_ds.values()}
                sides = tuple(sorted((s for s in available if s > self.config.attention_res), reverse=True))
                if not sides:
                    raise ValueError(
                        f"Divide & Bind: no cross-attention layer is larger than attention_res "
                        f"{self.config.attention_res} for a {h}x{h} latent; set --g_attribute_res (e.g. "
                        f"{self.config.attention_res}) or a smaller --g_attention_res"
                    )
        if sides != self._attribute_sides:
            self._attribute_sides = sides
            self.store = new_store(self.capture_spec)

    def _position_maps(self, maps: torch.Tensor, groups: Sequence[TokenGroup], eot: int | None) -> torch.Tensor:
        """Each group's smoothed map ``[K, r, r]`` from an aggregated map ``[r, r, 77]``."""
        cfg = self.config
        end = -1 if cfg.softmax_end == "last" or eot is None else eot
        return group_maps(maps, groups, cfg.softmax_scale, end, cfg.smooth_attentions, cfg.kernel_size, cfg.sigma)

    def _attribute_maps(self, maps: CapturedMaps) -> torch.Tensor:
        """The attribute sides' maps, each resized (nearest) to ``attention_res`` and averaged: ``[r, r, 77]``."""
        res = self.config.attention_res
        resized = [resize_nearest(maps.cross[s], res) for s in self._attribute_sides]
        return torch.stack(resized).mean(dim=0)

    # --- the loss --------------------------------------------------------------------------------------------------
    def group_loss(self, maps: CapturedMaps, group: LossGroup, step: int) -> GroupLoss:
        cfg = self.config
        subjects = self._position_maps(maps.cross[cfg.attention_res], group.token_groups, group.eot)  # [K, r, r]
        attributes_of = group.target.extras.get("attributes", (None,) * len(group.token_groups))
        attributes: list[torch.Tensor | None] = [None] * len(group.token_groups)
        present = [(k, a) for k, a in enumerate(attributes_of) if a is not None]
        if present:
            amaps = self._position_maps(self._attribute_maps(maps), [a for _, a in present], group.eot)  # [A, r, r]
            for (k, _), amap in zip(present, amaps):
                attributes[k] = amap
        loss, tv = divide_bind_loss(
            subjects, attributes, binding_weight(cfg.bind_weights, step), cfg.tv_last_row, cfg.bind_quantile,
            cfg.bind_quantile_low_tv, cfg.bind_low_tv, cfg.bind_eps,
        )  # fmt: skip
        # refinement runs while min_s TV(A_s) < threshold, i.e. while -min TV > -threshold (refinement_target)
        return GroupLoss(loss, tv, refine_value=-float(tv.min()))

    def refinement_target(self, threshold: float) -> float:
        return -threshold

    def refinement_limit(self, step: int) -> int:
        return self.config.max_refinement_steps_init_step if step == 0 else self.config.max_refinement_steps

    def view_maps(self, maps: CapturedMaps, group: LossGroup) -> torch.Tensor:
        return self._position_maps(maps.cross[self.config.attention_res], group.token_groups, group.eot)

    def step_size(self, step: int, num_steps: int) -> float:
        scale_range = np.linspace(self.config.scale_range[0], self.config.scale_range[1], num_steps)
        return float(self.config.scale_factor * np.sqrt(scale_range[step]))

    def record_scores(self, scores: torch.Tensor | None) -> dict:
        return {} if scores is None else {"tv": scores.tolist()}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any) -> torch.Tensor:
        self._set_sides(tuple(x.shape[-2:]), x.shape[0])
        return super().__call__(x, t, step, num_steps, cond)
