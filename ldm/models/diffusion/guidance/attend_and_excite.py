"""Attend-and-Excite (Chefer et al. 2023, "Attend-and-Excite: Attention-Based Semantic Guidance for T2I Diffusion").

At the start of a sampling step the latent z_t is moved against the gradient of a loss on the cross-attention maps
of a conditional UNet pass, so that every subject token gets a strong activation somewhere in the image:

    A = softmax(100 * maps[:, :, 1:-1])                      per pixel over the kept text positions (Sec. 3.2)
    m_k = max_{pixels} Gaussian(A[:, :, k])                  per subject token k
    L = max_k max(0, 1 - m_k)                                (eq. 3: the most neglected token drives the step)
    z_t <- z_t - alpha_i * dL/dz_t,  alpha_i = scale_factor * sqrt(linspace(1, 0.5, N)[i])   (eq. 4)

At the threshold steps ("iterative refinement", Sec. 3.3) the update is repeated until L <= 1 - threshold (at most
``max_refinement_steps`` times), then the regular update of the step is applied on top. The loop reproduces the
reference pipeline exactly (its README lists the behaviour); only the cost differs:
- the guidance pass stops after the last UNet block that produces maps at ``attention_res`` (same loss, gradient);
- a step that neither updates nor refines runs no pass at all;
- the first refinement iteration reuses the step's first pass (same latent), and the regular update reuses the pass
  that re-evaluates the refined latent; the reference's two unused no-grad forwards per iteration are not run;
- the samples of a batch run through one batched pass; with ``loss_reduction="per_sample"`` each has its own loss,
  token indices and refinement (gradients do not mix: the UNet treats samples independently).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ldm.models.diffusion.guidance.attend_excite_config import (
    LOSS_REDUCTIONS,
    SOFTMAX_ENDS,
    AttendExciteConfig,
    TokenGroup,
    normalize_token_indices,
    scale_schedule,
    step_size,
)
from ldm.models.diffusion.guidance.attend_excite_maps import (
    StepMaps,
    attend_excite_loss,
    blocks_at_resolution,
    capture_token_maps,
    cross_attention_context,
    group_token_maps,
    max_attention_per_token,
    token_attention_maps,
)
from ldm.modules.attention_control import AttentionStore, register_attention_controller
from ldm.modules.diffusionmodules.util import forced_checkpointing

# The settings and the map/loss functions live in attend_excite_config.py and attend_excite_maps.py; they stay
# importable from here, where they were defined before.
__all__ = [
    "LOSS_REDUCTIONS",
    "SOFTMAX_ENDS",
    "AttendAndExcite",
    "AttendExciteConfig",
    "StepMaps",
    "TokenGroup",
    "attend_excite_loss",
    "blocks_at_resolution",
    "capture_token_maps",
    "group_token_maps",
    "max_attention_per_token",
    "normalize_token_indices",
    "scale_schedule",
    "step_size",
    "token_attention_maps",
]

logger = logging.getLogger(__name__)


@dataclass
class _Group:
    """The refinement state of one loss group (a sample, or the whole batch with a shared loss)."""

    samples: list[int]
    token_groups: tuple[TokenGroup, ...]
    eot: int | None
    phase: str = "initial"  # initial -> (refine ->) (final ->) done
    iterations: int = 0
    record: dict = field(default_factory=dict)


class AttendAndExcite:
    """The A&E latent guidance (``LatentGuidance`` protocol), composed into any sampler.

    Args:
        unet: the UNet (``model.model.diffusion_model``); the guidance pass calls it directly with the context.
        config: the knobs; step indices are absolute (see :func:`scale_schedule`).
        token_indices: per-sample token indices (a list with one entry per sample) overriding
            ``config.token_indices`` (prompts of a batch may differ).
        eot_positions: per-sample end-of-text positions, used with ``softmax_end="eot"``.
        truncate: stop the guidance pass after the last block at ``attention_res`` (False runs the whole UNet).

    ``records`` holds, per guided step, each group's losses, scores, refinement and update (floats, for logs);
    ``num_forwards`` counts UNet guidance passes and ``num_sample_forwards`` the samples through them.

    ``on_maps`` (opt-in, for viewers such as the explorer): called at every step with a :class:`StepMaps`, each
    sample's smoothed token maps at the latent entering the step. A step with a guidance pass hands over that pass's
    first maps (no extra pass); a step without one runs one truncated no-grad pass for them
    (:func:`capture_token_maps`).
    """

    def __init__(
        self,
        unet: nn.Module,
        config: AttendExciteConfig,
        token_indices: Sequence[Sequence[int | Sequence[int]]] | None = None,
        eot_positions: Sequence[int | None] | None = None,
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        self.unet = unet
        self.on_maps = on_maps
        self.config = config
        self.per_sample_indices = None if token_indices is None else [normalize_token_indices(t) for t in token_indices]
        self.eot_positions = None if eot_positions is None else list(eot_positions)
        self.truncate = truncate
        self.store = AttentionStore([config.attention_res])
        self.records: list[dict] = []
        self.num_forwards = 0
        self.num_sample_forwards = 0
        self._warned: set[int] = set()

    # --- set-up ----------------------------------------------------------------------------------------------
    def _indices_of(self, sample: int) -> tuple[TokenGroup, ...]:
        if self.per_sample_indices is None:
            return self.config.token_indices
        if sample >= len(self.per_sample_indices):
            raise ValueError(f"A&E got token indices for {len(self.per_sample_indices)} samples, batch needs more")
        return self.per_sample_indices[sample]

    def _groups(self, batch: int) -> list[_Group]:
        eots = self.eot_positions or [None] * batch
        if self.config.loss_reduction == "shared":
            indices = {self._indices_of(b) for b in range(batch)}
            if len(indices) != 1:
                raise ValueError("loss_reduction 'shared' needs the same token indices for every sample")
            shared = indices.pop()
            return [_Group(list(range(batch)), shared, eots[0])] if shared else []
        return [_Group([b], self._indices_of(b), eots[b]) for b in range(batch) if self._indices_of(b)]

    def _check_positions(self, group: _Group, n_tokens: int) -> None:
        end = n_tokens - 1 if self.config.softmax_end == "last" or group.eot is None else group.eot
        for token in group.token_groups:
            for p in token:
                if not 1 <= p < end:
                    raise ValueError(
                        f"A&E token index {p} is outside 1..{end - 1}, the positions the softmax keeps "
                        "(0 is the start token)"
                    )

    # --- one guidance pass ------------------------------------------------------------------------------------
    def _scores(
        self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor, groups: list[_Group], stop_after: str | None
    ):
        """Run the capture pass on the samples of ``groups``; returns (leaf latent, rows, per-group (loss, scores),
        the maps ``[b, r, r, 77]``)."""
        samples = sorted(s for g in groups for s in g.samples)
        rows = {s: r for r, s in enumerate(samples)}
        leaf = z[samples].detach().requires_grad_(True)  # [b, C, h, w]
        self.store.reset()
        self.unet(leaf, t[samples], context=context[samples], stop_after=stop_after)
        maps = self.store.aggregate(len(samples), self.config.attention_res)  # [b, r, r, 77]
        self.store.reset()
        self.num_forwards += 1
        self.num_sample_forwards += len(samples)
        results = []
        for g in groups:
            group_maps = maps[[rows[s] for s in g.samples]].mean(dim=0)  # [r, r, 77]
            scores = max_attention_per_token(group_maps, g.token_groups, self.config, g.eot)
            results.append((attend_excite_loss(scores), scores))
        return leaf, rows, results, maps

    def _finite_or_warn(self, group: _Group, *tensors: torch.Tensor) -> bool:
        if all(bool(torch.isfinite(x).all()) for x in tensors):
            return True
        for s in group.samples:
            if s not in self._warned:
                self._warned.add(s)
                logger.warning("Attend-and-Excite: non-finite loss or gradient for sample %d; update skipped", s)
        return False

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any) -> torch.Tensor:
        cfg = self.config
        update = step < cfg.max_iter_to_alter
        threshold = cfg.thresholds.get(step)
        groups = self._groups(x.shape[0])
        if not groups or (not update and threshold is None):
            if groups and self.on_maps is not None:
                self._watch(x, t, step, num_steps, cond, groups)
            return x
        context = cross_attention_context(cond)  # [B, 77, D]
        for g in groups:
            self._check_positions(g, context.shape[1])
        capture = blocks_at_resolution(self.unet, tuple(x.shape[-2:]), cfg.attention_res)
        stop_after = capture[-1] if self.truncate else None
        alpha = step_size(cfg, step, num_steps)
        target = max(0.0, 1.0 - threshold) if threshold is not None else None
        z = x.detach().clone()
        with (
            torch.enable_grad(),
            forced_checkpointing(cfg.checkpoint_guidance),
            register_attention_controller(self.unet, self.store, layers=capture),
        ):
            pending = groups
            while pending:
                leaf, rows, results, maps = self._scores(z, t, context, pending, stop_after)
                if pending is groups and self.on_maps is not None:  # the first pass: the latent entering the step
                    kept = {s: group_token_maps(maps[rows[s]].detach(), g.token_groups, cfg, g.eot).cpu()
                            for g in groups for s in g.samples}  # fmt: skip
                    self.on_maps(StepMaps(step, num_steps, int(t[0]), kept, guided=True))
                to_update = []
                for g, (loss, scores) in zip(pending, results):
                    value = float(loss.detach())
                    if not self._advance(g, value, scores.detach(), update, target) or value == 0:
                        continue
                    if self._finite_or_warn(g, loss):
                        to_update.append((g, loss))
                    else:
                        g.phase = "done"
                if to_update:
                    grad = torch.autograd.grad(torch.stack([loss for _, loss in to_update]).sum(), leaf)[0]
                    for g, _ in to_update:
                        g_grad = grad[[rows[s] for s in g.samples]]  # [n, C, h, w]
                        if self._finite_or_warn(g, g_grad):
                            z[g.samples] = z[g.samples] - alpha * g_grad.detach()  # eq. 4
                        else:
                            g.phase = "done"
                for g in pending:
                    if g.phase == "refine_next":
                        g.phase = "refine"
                    elif g.phase == "final_next":
                        g.phase = "final"
                    elif g.phase == "update":
                        g.phase = "done"
                pending = [g for g in pending if g.phase in ("refine", "final")]
        records = [g.record | {"samples": g.samples} for g in groups]
        self.records.append({"step": step, "t": int(t[0]), "groups": records})
        return z

    def _watch(
        self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any, groups: list[_Group]
    ) -> None:
        """``on_maps`` at a step without guidance: one capture-only pass for the maps."""
        samples = [s for g in groups for s in g.samples]
        eots = [g.eot for g in groups for _ in g.samples]
        sel = torch.tensor(samples, device=x.device)
        indices = [self._indices_of(s) for s in samples]
        context = cross_attention_context(cond)[sel]  # [n, 77, D]
        maps = capture_token_maps(self.unet, x[sel], t[sel], context, indices, self.config, eots)
        self.on_maps(StepMaps(step, num_steps, int(t[0]), dict(zip(samples, maps)), guided=False))

    def _advance(self, g: _Group, loss: float, scores: torch.Tensor, update: bool, target: float | None) -> bool:
        """Move ``g`` on after a pass that gave ``loss``; True when this pass's gradient is to be applied.

        Sets ``g.phase`` to the phase of the next pass (``refine_next``/``final_next``), ``update`` (regular update
        with this pass, then done) or ``done``.
        """
        rec = g.record
        if g.phase == "initial":
            rec.update(loss=loss, max_att=scores.tolist())
            if target is not None and loss > target:
                rec["refinement"] = {"target_loss": target, "losses": []}
                g.phase = "refine"  # the first refinement iteration reuses this pass (same latent)
            else:
                g.phase = "update" if update else "done"
                if update:
                    rec["update_loss"] = loss
                return update
        if g.phase == "refine":
            g.iterations += 1
            ref = rec["refinement"]
            ref["losses"].append(loss)
            # Reference loop: update, then stop once the loss from *before* the update is <= target or at the limit.
            if loss <= target or g.iterations >= self.config.max_refinement_steps:
                ref.update(iterations=g.iterations, hit_max=loss > target)
                g.phase = "final_next" if update else "done"
            else:
                g.phase = "refine_next"
            return True
        if g.phase == "final":  # the refined latent, evaluated once more; its gradient is the regular update
            rec["refinement"]["loss_out"] = loss
            rec["update_loss"] = loss
            g.phase = "done"
            return True
        raise RuntimeError(f"unexpected A&E phase {g.phase!r}")
