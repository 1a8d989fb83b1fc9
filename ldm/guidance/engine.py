"""The loop Attend-and-Excite and its successors share: a loss on the attention maps moves the latent.

At a guided step the latent z_t goes through a truncated, model-level UNet pass with gradient (``denoiser.py``); the
attention maps of that pass (``capture.py``) give each loss group a loss L, and

    z_t <- z_t - alpha_i * dL/dz_t                                   (A&E eq. 4; alpha_i from the method)

At the method's threshold steps the update is repeated ("iterative refinement", A&E Sec. 3.3) until the group's
refinement value reaches the target (at most ``max_refinement_steps`` times); then the regular update of the step is
applied on top. The loop reproduces the A&E reference exactly (``tests/fixtures/golden/README.md`` lists the
behaviour); only the cost differs:
- the pass stops after the last UNet block whose maps the method reads (same loss, same gradient);
- a step that neither updates nor refines runs no pass at all;
- the first refinement iteration reuses the step's first pass (same latent), and the regular update reuses the pass
  that re-evaluates the refined latent; the reference's unused no-grad forwards are not run;
- the samples of a batch run through one batched pass; with ``loss_reduction="per_sample"`` each sample is its own
  loss group with its own refinement (gradients do not mix: the UNet treats samples independently); ``"shared"`` makes
  the batch one group whose maps are averaged over its samples.

A method subclasses :class:`AttentionLossGuidance` and defines what differs: its loss (``group_loss``) and step size
(``step_size``), and where they differ from A&E's, the maps it reads (``capture_spec``: cross-attention at
``config.attention_res``), the maps a viewer shows (``view_maps``: A&E's smoothed token maps), its update steps,
thresholds, refinement target and refinement limit (``refinement_limit``). The config fields the loop reads, with their
defaults when a config has no such field: ``attention_res``, ``max_iter_to_alter``, ``thresholds`` ({}),
``max_refinement_steps`` (0), ``loss_reduction`` ("per_sample") and ``checkpoint_guidance`` (False).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ldm.guidance.capture import CapturedMaps, CaptureSpec, capture_plan, new_store
from ldm.guidance.denoiser import GuidanceDenoiser, cross_attention_context
from ldm.guidance.tokens import TokenGroup
from ldm.models.diffusion.sampler_base import select_cond
from ldm.modules.attention_control import register_attention_controller
from ldm.modules.diffusionmodules.util import forced_checkpointing

__all__ = ["SampleTarget", "LossGroup", "GroupLoss", "StepMaps", "AttentionLossGuidance"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleTarget:
    """What guidance aims at in one sample: the subject token groups, the end-of-text position, and
    method-specific resolved structures (``extras``, e.g. SynGen's modifier-noun position pairs)."""

    token_groups: tuple[TokenGroup, ...] = ()
    eot: int | None = None
    extras: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class LossGroup:
    """The refinement state of one loss group (a sample, or the whole batch with a shared loss)."""

    samples: list[int]
    target: SampleTarget
    phase: str = "initial"  # initial -> (refine ->) (final ->) done
    iterations: int = 0
    record: dict = field(default_factory=dict)

    @property
    def token_groups(self) -> tuple[TokenGroup, ...]:
        return self.target.token_groups

    @property
    def eot(self) -> int | None:
        return self.target.eot


@dataclass
class GroupLoss:
    """A group's loss on one pass: ``loss`` (scalar, in the graph), per-token ``scores`` for the records and
    viewers (A&E: m_k), and the value the refinement compares with its target (None: ``float(loss)``)."""

    loss: torch.Tensor
    scores: torch.Tensor | None = None
    refine_value: float | None = None


def timestep_value(t: torch.Tensor) -> int | float:
    """The step's timestep for records: an int, or a float for fractional timesteps (Euler's "linspace" spacing)."""
    value = float(t[0])
    return int(value) if value.is_integer() else value


@dataclass
class StepMaps:
    """What ``on_maps`` gets at one step."""

    step: int  # 0-based step of the run
    num_steps: int
    t: int | float  # the timestep of the step (a float where the sampler's timesteps are fractional)
    maps: dict[int, torch.Tensor]  # sample -> the method's maps [K, r, r] (CPU) at the latent entering the step
    guided: bool  # True: from the step's guidance pass; False: from a capture-only pass (a step without guidance)


class AttentionLossGuidance:
    """The shared latent-guidance loop (``LatentGuidance`` protocol); see the module docstring.

    Args:
        model: the ``LatentDiffusion`` (the pass goes through ``apply_model``) or a bare UNet (unit tests).
        config: the method's settings; step indices are absolute (``GuidanceMethod.for_steps``).
        targets: one :class:`SampleTarget` per sample; None: :meth:`default_target` for every sample.
        truncate: stop the guidance pass after the last block the method reads (False runs the whole UNet).
        on_maps: viewers (the explorer): called at every step with a :class:`StepMaps`. A step with a guidance pass
            hands over that pass's first maps (no extra pass); a step without one runs one truncated no-grad pass.

    ``records`` holds, per guided step, each group's losses, scores, refinement and update (floats, for logs);
    ``num_forwards`` counts guidance passes and ``num_sample_forwards`` the samples through them.
    """

    def __init__(
        self,
        model: Any,
        config: Any,
        targets: Sequence[SampleTarget] | None = None,
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        self.denoiser = GuidanceDenoiser(model)
        self.unet = self.denoiser.unet
        self.config = config
        self.targets = None if targets is None else list(targets)
        self.truncate = truncate
        self.on_maps = on_maps
        self.store = new_store(self.capture_spec)
        self.records: list[dict] = []
        self.num_forwards = 0
        self.num_sample_forwards = 0
        self._warned: set[int] = set()

    # --- what a method defines ---------------------------------------------------------------------------------
    @property
    def capture_spec(self) -> CaptureSpec:
        """The maps the loss reads (default: cross-attention at ``config.attention_res``)."""
        return CaptureSpec(cross=(self.config.attention_res,))

    def group_loss(self, maps: CapturedMaps, group: LossGroup, step: int) -> GroupLoss:
        """The loss of ``group`` from its maps (averaged over its samples: ``[r, r, N]`` per side)."""
        raise NotImplementedError

    def view_maps(self, maps: CapturedMaps, group: LossGroup) -> torch.Tensor:
        """The maps a viewer shows for one sample of ``group``, one per token group: ``[K, r, r]`` (default: A&E's
        smoothed token maps with the settings of the config's fields of the same names)."""
        from ldm.guidance.attend_excite.config import display_config
        from ldm.guidance.attend_excite.maps import group_token_maps

        shown = display_config(self.config)
        return group_token_maps(maps.cross[shown.attention_res], group.token_groups, shown, group.eot)

    def default_target(self) -> SampleTarget:
        """The target of every sample when none were given per sample."""
        return SampleTarget()

    def has_target(self, target: SampleTarget) -> bool:
        """Whether a sample with this target is guided at all (default: it names tokens)."""
        return bool(target.token_groups)

    def check_group(self, group: LossGroup, num_tokens: int) -> None:
        """Raise for a group the method cannot guide (e.g. positions outside the prompt)."""

    def step_size(self, step: int, num_steps: int) -> float:
        raise NotImplementedError

    def updates_at(self, step: int) -> bool:
        """Whether step ``step`` gets the regular update (A&E: ``step < max_iter_to_alter``)."""
        return step < self.config.max_iter_to_alter

    def threshold_at(self, step: int) -> float | None:
        """The refinement threshold of step ``step``, or None (no refinement)."""
        return getattr(self.config, "thresholds", {}).get(step)

    def refinement_target(self, threshold: float) -> float:
        """Refine while the group's refinement value is above this (A&E: the loss above ``1 - threshold``)."""
        return max(0.0, 1.0 - threshold)

    def refinement_limit(self, step: int) -> int:
        """At most this many refinement iterations at threshold step ``step`` (A&E: ``max_refinement_steps``)."""
        return getattr(self.config, "max_refinement_steps", 0)

    def record_scores(self, scores: torch.Tensor | None) -> dict:
        return {} if scores is None else {"scores": scores.tolist()}

    # --- the loop -------------------------------------------------------------------------------------------------
    def target_of(self, sample: int) -> SampleTarget:
        if self.targets is None:
            return self.default_target()
        if sample >= len(self.targets):
            raise ValueError(f"guidance got targets for {len(self.targets)} samples, the batch needs more")
        return self.targets[sample]

    def loss_groups(self, batch: int) -> list[LossGroup]:
        if getattr(self.config, "loss_reduction", "per_sample") == "shared":
            targets = {self.target_of(b) for b in range(batch)}
            if len(targets) != 1:
                raise ValueError("loss_reduction 'shared' needs the same token indices for every sample")
            shared = targets.pop()
            return [LossGroup(list(range(batch)), shared)] if self.has_target(shared) else []
        return [LossGroup([b], self.target_of(b)) for b in range(batch) if self.has_target(self.target_of(b))]

    def _pass(self, z: torch.Tensor, t: torch.Tensor, cond: Any, groups: list[LossGroup], stop_after: str | None):
        """One capture pass on the samples of ``groups``; returns (leaf latent, rows, per-group GroupLoss, maps)."""
        samples = sorted(s for g in groups for s in g.samples)
        rows = {s: r for r, s in enumerate(samples)}
        leaf = z[samples].detach().requires_grad_(True)  # [b, C, h, w]
        self.store.reset()
        self.denoiser(leaf, t[samples], select_cond(cond, samples), stop_after)
        maps = CapturedMaps.collect(self.store, self.capture_spec, len(samples))
        self.store.reset()
        self.num_forwards += 1
        self.num_sample_forwards += len(samples)
        losses = [self.group_loss(maps.rows([rows[s] for s in g.samples]), g, self._step) for g in groups]
        return leaf, rows, losses, maps

    def _finite_or_warn(self, group: LossGroup, *tensors: torch.Tensor) -> bool:
        if all(bool(torch.isfinite(x).all()) for x in tensors):
            return True
        for s in group.samples:
            if s not in self._warned:
                self._warned.add(s)
                logger.warning("%s: non-finite loss or gradient for sample %d; update skipped", type(self).__name__, s)
        return False

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any) -> torch.Tensor:
        self._step = step
        update = self.updates_at(step)
        threshold = self.threshold_at(step)
        groups = self.loss_groups(x.shape[0])
        if not groups or (not update and threshold is None):
            if groups and self.on_maps is not None:
                self._watch(x, t, step, num_steps, cond, groups)
            return x
        num_tokens = _context_length(cond)
        for g in groups:
            self.check_group(g, num_tokens)
        plan = capture_plan(self.unet, tuple(x.shape[-2:]), self.capture_spec)
        stop_after = plan.stop_after if self.truncate else None
        alpha = self.step_size(step, num_steps)
        target = self.refinement_target(threshold) if threshold is not None else None
        z = x.detach().clone()
        with (
            torch.enable_grad(),
            forced_checkpointing(getattr(self.config, "checkpoint_guidance", False)),
            register_attention_controller(self.unet, self.store, layers=plan.layers),
        ):
            pending = groups
            while pending:
                leaf, rows, results, maps = self._pass(z, t, cond, pending, stop_after)
                if pending is groups and self.on_maps is not None:  # the first pass: the latent entering the step
                    kept = {s: self.view_maps(maps.rows([rows[s]]), g).detach().cpu() for g in groups
                            for s in g.samples}  # fmt: skip
                    self.on_maps(StepMaps(step, num_steps, timestep_value(t), kept, guided=True))
                to_update = []
                for g, result in zip(pending, results):
                    value = float(result.loss.detach())
                    refine_value = value if result.refine_value is None else result.refine_value
                    if not self._advance(g, value, refine_value, result.scores, update, target) or value == 0:
                        continue
                    if self._finite_or_warn(g, result.loss):
                        to_update.append((g, result.loss))
                    else:
                        g.phase = "done"
                if to_update:
                    grad = torch.autograd.grad(torch.stack([loss for _, loss in to_update]).sum(), leaf)[0]
                    for g, _ in to_update:
                        g_grad = grad[[rows[s] for s in g.samples]]  # [n, C, h, w]
                        if self._finite_or_warn(g, g_grad):
                            z[g.samples] = z[g.samples] - alpha * g_grad.detach()  # A&E eq. 4
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
        self.records.append({"step": step, "t": timestep_value(t), "groups": records})
        return z

    @torch.no_grad()
    def _watch(
        self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any, groups: list[LossGroup]
    ) -> None:
        """``on_maps`` at a step without guidance: one capture-only pass for the maps."""
        samples = [s for g in groups for s in g.samples]
        plan = capture_plan(self.unet, tuple(x.shape[-2:]), self.capture_spec)
        store = new_store(self.capture_spec)
        with register_attention_controller(self.unet, store, layers=plan.layers):
            self.denoiser(x[samples], t[samples], select_cond(cond, samples), plan.stop_after)
        maps = CapturedMaps.collect(store, self.capture_spec, len(samples))
        kept = {s: self.view_maps(maps.rows([r]), g).cpu() for r, (g, s) in
                enumerate((g, s) for g in groups for s in g.samples)}  # fmt: skip
        self.on_maps(StepMaps(step, num_steps, timestep_value(t), kept, guided=False))

    def _advance(
        self,
        g: LossGroup,
        loss: float,
        refine_value: float,
        scores: torch.Tensor | None,
        update: bool,
        target: float | None,
    ) -> bool:
        """Move ``g`` on after a pass that gave ``loss``; True when this pass's gradient is to be applied.

        Sets ``g.phase`` to the phase of the next pass (``refine_next``/``final_next``), ``update`` (regular update
        with this pass, then done) or ``done``.
        """
        rec = g.record
        if g.phase == "initial":
            rec.update(loss=loss, **self.record_scores(None if scores is None else scores.detach()))
            if target is not None and refine_value > target:
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
            # Reference loop: update, then stop once the value from *before* the update is <= target or at the limit.
            if refine_value <= target or g.iterations >= self.refinement_limit(self._step):
                ref.update(iterations=g.iterations, hit_max=refine_value > target)
                g.phase = "final_next" if update else "done"
            else:
                g.phase = "refine_next"
            return True
        if g.phase == "final":  # the refined latent, evaluated once more; its gradient is the regular update
            rec["refinement"]["loss_out"] = loss
            rec["update_loss"] = loss
            g.phase = "done"
            return True
        raise RuntimeError(f"unexpected guidance phase {g.phase!r}")


def _context_length(cond: Any) -> int:
    """The number of text positions of a conditioning (77): the context's second dimension."""
    return int(cross_attention_context(cond).shape[1])
