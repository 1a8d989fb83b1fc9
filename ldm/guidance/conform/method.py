"""CONFORM on the shared guidance loop: A&E's schedule and update with the contrastive loss of ``loss.py``.

Per guided step, for each loss group (a sample):

    L = InfoNCE(smoothed maps of the grouped tokens at z_t  +  the same tokens' maps of the previous step)
    z_t <- z_t - alpha_i * dL/dz_t,  alpha_i = scale_factor * sqrt(linspace(1, 0.5, N)[i])      (A&E eq. 4)

At the refinement steps the update is first applied ``max_refinement_steps`` times (CONFORM has no threshold: it
always runs them all), then the refined latent is evaluated once more and gets the regular update (when
``i < max_iter_to_alter``). This is the official loop (tests/fixtures/guidance/conform/README.md) with the shared
loop's economies (``ldm/guidance/engine.py``); its memory is exact:

- after a step, the maps of the group's **last** guidance pass of that step (at a refinement step: the pass on the
  refined latent) become the memory of the next step, or only those of ``previous_attention_map_anchor_step``;
- the official code refreshes the memory with a pass at every step, guided or not; here a step without guidance runs
  a no-grad capture pass only when a later guided step will read its maps (a refinement step after
  ``max_iter_to_alter``), on the latent the step returns;
- one memory per loss group: the official batch shares one (the last sample's), a bug its batch-1 runs avoid;
- a step where every group's loss is 0 whatever the latent (single-word groups and no memory yet, e.g. step 0 with
  ``--ae_tokens`` groups) runs one capture pass for the memory instead of its passes that cannot update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.guidance.capture import CapturedMaps, capture_plan, new_store
from ldm.guidance.conform.config import ConformConfig, step_size
from ldm.guidance.conform.loss import conform_loss, group_embeddings
from ldm.guidance.engine import AttentionLossGuidance, GroupLoss, LossGroup, SampleTarget, StepMaps
from ldm.guidance.tokens import TokenGroup
from ldm.models.diffusion.sampler_base import select_cond
from ldm.modules.attention_control import register_attention_controller

__all__ = ["Conform"]

MemoryKey = tuple[int, ...]  # the samples of a loss group


class Conform(AttentionLossGuidance):
    """The CONFORM latent guidance (``LatentGuidance`` protocol), composed into any sampler.

    Args:
        model: the ``LatentDiffusion`` (or a bare UNet in unit tests).
        config: the knobs; step indices are absolute (``scale_schedule``).
        groups: per sample, its token groups (positions; see ``groups.py``); an empty entry leaves a sample alone.
        truncate, on_maps: as ``AttentionLossGuidance``.
    """

    def __init__(
        self,
        model: Any,
        config: ConformConfig,
        groups: Sequence[Sequence[TokenGroup]],
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        targets = [SampleTarget(tuple(tuple(int(p) for p in g) for g in sample)) for sample in groups]
        super().__init__(model, config, targets, truncate=truncate, on_maps=on_maps)
        self.memory: dict[MemoryKey, torch.Tensor] = {}  # group -> previous maps [r, r, 77] (no graph)
        self._latest: dict[MemoryKey, torch.Tensor] = {}  # group -> the maps of this step's last pass so far

    # --- the loss ------------------------------------------------------------------------------------------------
    def _embedding_options(self) -> dict:
        c = self.config
        return {
            "softmax_normalize": c.softmax_normalize, "spatial_softmax": c.softmax_normalize_attention_maps,
            "softmax_scale": c.softmax_scale, "smooth_attentions": c.smooth_attentions,
            "kernel_size": c.kernel_size, "sigma": c.sigma,
        }  # fmt: skip

    def group_loss(self, maps: CapturedMaps, group: LossGroup, step: int) -> GroupLoss:
        current = maps.cross[self.config.attention_res]  # [r, r, 77], in the graph
        key = tuple(group.samples)
        self._latest[key] = current.detach()
        loss = conform_loss(current, self.memory.get(key), group.token_groups, temperature=self.config.temperature,
                            **self._embedding_options())  # fmt: skip
        return GroupLoss(loss)

    def view_maps(self, maps: CapturedMaps, group: LossGroup) -> torch.Tensor:
        """Each group's map ``[K, r, r]``: the max over its positions of the maps the loss compares."""
        res = self.config.attention_res
        emb, labels = group_embeddings(maps.cross[res], group.token_groups, **self._embedding_options())
        emb = emb.reshape(-1, res, res)  # [P, r, r]
        return torch.stack([emb[labels == k].max(dim=0).values for k in range(len(group.token_groups))])

    # --- the schedule ----------------------------------------------------------------------------------------------
    def check_group(self, group: LossGroup, num_tokens: int) -> None:
        for token in group.token_groups:
            for p in token:
                if not 1 <= p <= num_tokens - 2:
                    raise ValueError(f"CONFORM token position {p} is outside 1..{num_tokens - 2}, the positions "
                                     "its maps keep (0 is the start token)")  # fmt: skip

    def step_size(self, step: int, num_steps: int) -> float:
        return step_size(self.config, step, num_steps)

    def threshold_at(self, step: int) -> float | None:
        refine = step in self.config.iterative_refinement_steps and self.config.max_refinement_steps > 0
        return 0.0 if refine else None

    def refinement_target(self, threshold: float) -> float:
        """Below any loss (InfoNCE is >= 0): a refinement step runs all ``max_refinement_steps`` iterations."""
        return -1.0

    def _guided(self, step: int) -> bool:
        return self.updates_at(step) or self.threshold_at(step) is not None

    def _memory_needed_after(self, step: int, num_steps: int) -> bool:
        """Whether a later guided step reads the maps of ``step`` (so a step without update must capture them)."""
        if not self.config.memory_step(step):
            return False
        anchored = self.config.previous_attention_map_anchor_step == step
        later = range(step + 1, num_steps) if anchored else range(step + 1, min(step + 2, num_steps))
        return any(self._guided(s) for s in later)

    # --- the loop with its memory --------------------------------------------------------------------------------
    def _loss_is_zero(self, group: LossGroup) -> bool:
        """No negative pair (one group) or no positive pair (single positions, no memory yet): L = 0 at any latent."""
        groups = group.token_groups
        singles = all(len(g) == 1 for g in groups)
        return len(groups) < 2 or (singles and tuple(group.samples) not in self.memory)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any) -> torch.Tensor:
        self._latest = {}
        groups = self.loss_groups(x.shape[0])
        zero = bool(groups) and self.on_maps is None and all(self._loss_is_zero(g) for g in groups)
        z = x if zero else super().__call__(x, t, step, num_steps, cond)  # zero: no pass could update
        if (zero or not self.updates_at(step)) and self._memory_needed_after(step, num_steps):
            self._capture(z, t, cond)  # the official code's pass on the latent the step leaves
        if self.config.memory_step(step):
            self.memory.update(self._latest)
        return z

    @torch.no_grad()
    def _capture(self, z: torch.Tensor, t: torch.Tensor, cond: Any) -> None:
        """One no-grad capture pass for the memory of every loss group (replaces this step's latest maps)."""
        groups = self.loss_groups(z.shape[0])
        if not groups:
            return
        samples = sorted(s for g in groups for s in g.samples)
        rows = {s: r for r, s in enumerate(samples)}
        plan = capture_plan(self.unet, tuple(z.shape[-2:]), self.capture_spec)
        store = new_store(self.capture_spec)
        with register_attention_controller(self.unet, store, layers=plan.layers):
            self.denoiser(z[samples], t[samples], select_cond(cond, samples), plan.stop_after)
        maps = CapturedMaps.collect(store, self.capture_spec, len(samples))
        self.num_forwards += 1
        self.num_sample_forwards += len(samples)
        for g in groups:
            self._latest[tuple(g.samples)] = maps.rows([rows[s] for s in g.samples]).cross[self.config.attention_res]
