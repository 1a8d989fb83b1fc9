"""INITNO as a guidance object: the start-noise optimisation (``noise.py``) before the first step, then
Attend-and-Excite-style updates of z_t during sampling, as the official pipeline runs them.

At a step ``i < max_iter_to_alter``, per sample, a guidance pass on z_t gives the terms of ``loss.py``; every
evaluation first folds the pass's maps into the sample's moving average (the alignment term's reference), then

    joint = L_ca + clean_weight * clean + alignment_weight * alignment + L_sa
    threshold step with L_ca > 1 - threshold or L_sa > self_threshold: refine,
        z_t <- z_t - alpha_i * d joint / d z_t, until the values of the pass before the update are within both
        targets or ``max_refinement_steps`` iterations, then evaluate the refined z_t once more;
    regular update  z_t <- z_t - alpha_i * dL_ca / dz_t     (the cross-attention response term only)

with alpha_i as in Attend-and-Excite. Like the shared loop (``ldm/guidance/engine.py``) it is cheaper than the
reference but gives its results: the passes stop after the last block at ``attention_res``; the first refinement
iteration reuses the step's first pass (same latent; the moving average is still updated twice, as the reference's
second pass on the same latent does); steps ``>= max_iter_to_alter`` run no pass (the reference's passes there only
feed the moving average, which nothing reads afterwards); the samples of a batch share each pass. Loss groups are
always single samples (the reference runs each sample alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.guidance.attend_excite.config import step_size
from ldm.guidance.attend_excite.method import token_targets
from ldm.guidance.capture import CapturedMaps, CaptureSpec
from ldm.guidance.engine import AttentionLossGuidance, LossGroup, SampleTarget, StepMaps, _context_length
from ldm.guidance.initno.config import InitNOConfig
from ldm.guidance.initno.loss import InitNOTerms, initno_terms, text_softmax, token_maps, update_cache
from ldm.guidance.initno.noise import StartNoiseOptimizer, capture_pass
from ldm.models.diffusion.sampler_base import select_cond
from ldm.modules.diffusionmodules.util import forced_checkpointing

__all__ = ["InitNO"]


class InitNO(AttentionLossGuidance):
    """INITNO (``LatentGuidance`` protocol with the ``prepare_start`` hook), composed into any sampler.

    Args: as ``AttendAndExcite`` (``token_indices`` per sample, ``eot_positions`` for ``softmax_end="eot"``).
    ``num_forwards`` counts all guidance passes (noise optimisation and sampling), ``noise_forwards`` those of the
    noise optimisation; ``records`` the sampling steps; ``noise_records`` each sample's rounds.
    """

    def __init__(
        self,
        model: Any,
        config: InitNOConfig,
        token_indices: Sequence[Sequence[int | Sequence[int]]] | None = None,
        eot_positions: Sequence[int | None] | None = None,
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        super().__init__(model, config, token_targets(token_indices, eot_positions), truncate=truncate, on_maps=on_maps)
        self.noise = StartNoiseOptimizer(self.denoiser, config, self.capture_spec, truncate)
        self.caches: dict[int, torch.Tensor] = {}  # sample -> moving average of its maps [r, r, n]

    @property
    def capture_spec(self) -> CaptureSpec:
        res = self.config.attention_res
        return CaptureSpec(cross=(res,), self_attention=(res,))

    @property
    def noise_forwards(self) -> int:
        return self.noise.num_forwards

    @property
    def noise_records(self) -> dict[int, dict]:
        return self.noise.records

    def default_target(self) -> SampleTarget:
        return SampleTarget(self.config.token_indices)

    def loss_groups(self, batch: int) -> list[LossGroup]:
        return [LossGroup([b], self.target_of(b)) for b in range(batch) if self.has_target(self.target_of(b))]

    def check_group(self, group: LossGroup, num_tokens: int) -> None:
        end = num_tokens - 1 if self.config.softmax_end == "last" or group.eot is None else group.eot
        for token in group.token_groups:
            for p in token:
                if not 1 <= p < end:
                    raise ValueError(f"INITNO token index {p} is outside 1..{end - 1} (0 is the start token)")

    def step_size(self, step: int, num_steps: int) -> float:
        return step_size(self.config, step, num_steps)

    def view_maps(self, maps: CapturedMaps, group: LossGroup) -> torch.Tensor:
        cfg = self.config
        end = -1 if cfg.softmax_end == "last" or group.eot is None else group.eot
        attn = text_softmax(maps.cross[cfg.attention_res], cfg.softmax_scale, end)
        return token_maps(attn, group.token_groups, cfg.smooth_attentions, cfg.kernel_size, cfg.sigma)

    # --- before the first step ----------------------------------------------------------------------------------
    def prepare_start(
        self, x: torch.Tensor, t: torch.Tensor, num_steps: int, cond: Any, generator: Any
    ) -> torch.Tensor:
        """The optimised start noise for x_T ``[B, C, h, w]`` (``t`` ``[B]``: the run's first timestep)."""
        self.caches = {}
        if self.config.noise_rounds == 0:
            return x
        groups = {g.samples[0]: g for g in self.loss_groups(x.shape[0])}
        if not groups:
            return x
        for g in groups.values():
            self.check_group(g, _context_length(cond))
        targets = [groups[b].target if b in groups else None for b in range(x.shape[0])]
        before = self.noise.num_forwards, self.noise.num_sample_forwards
        out = self.noise(x, t, cond, targets, generator)
        self.num_forwards += self.noise.num_forwards - before[0]
        self.num_sample_forwards += self.noise.num_sample_forwards - before[1]
        return out

    # --- during sampling ------------------------------------------------------------------------------------------
    def _evaluate(self, group: LossGroup, maps: CapturedMaps) -> tuple[InitNOTerms, torch.Tensor]:
        """Fold the pass's maps into the sample's moving average, then the terms and the joint loss."""
        cfg, sample = self.config, group.samples[0]
        cross, self_maps = maps.cross[cfg.attention_res], maps.self_attention[cfg.attention_res]
        end = -1 if cfg.softmax_end == "last" or group.eot is None else group.eot
        attn = text_softmax(cross, cfg.softmax_scale, end)  # [r, r, n]
        self.caches[sample] = update_cache(self.caches.get(sample), attn, cfg.alignment_decay)
        terms = initno_terms(cross, self_maps, group.token_groups, cfg, group.eot, cache=self.caches[sample])
        joint = terms.cross + terms.clean * cfg.clean_weight + terms.alignment * cfg.alignment_weight + terms.conflict
        return terms, joint

    def _advance_group(self, g: LossGroup, maps: CapturedMaps, target: float | None) -> torch.Tensor | None:
        """Evaluate ``g`` on this pass and move it on; returns the loss whose gradient updates z_t (None: none)."""
        cfg, rec = self.config, g.record
        terms, joint = self._evaluate(g, maps)
        if g.phase == "initial":
            rec.update(loss=_value(terms.cross), conflict=_value(terms.conflict), clean=_value(terms.clean),
                       alignment=_value(terms.alignment), max_att=terms.scores.detach().tolist())  # fmt: skip
            if target is None or not (terms.cross > target or terms.conflict > cfg.self_threshold):
                g.phase = "done"
                rec["update_loss"] = _value(terms.cross)
                return terms.cross
            rec["refinement"] = {"target_loss": target, "losses": []}
            g.phase = "refine"
            terms, joint = self._evaluate(g, maps)  # iteration 1: the reference's second pass on the same latent
        if g.phase == "refine":
            g.iterations += 1
            ref = rec["refinement"]
            ref["losses"].append([_value(terms.cross), _value(terms.conflict)])
            within = not (terms.cross > target or terms.conflict > cfg.self_threshold)
            if within or g.iterations >= cfg.max_refinement_steps:
                ref.update(iterations=g.iterations, hit_max=not within)
                g.phase = "final"
            return joint
        g.phase = "done"  # final: the refined latent evaluated once more; its response loss is the regular update
        rec["refinement"]["loss_out"] = _value(terms.cross)
        rec["update_loss"] = _value(terms.cross)
        return terms.cross

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int, num_steps: int, cond: Any) -> torch.Tensor:
        self._step = step
        groups = self.loss_groups(x.shape[0])
        if not groups or not self.updates_at(step):  # the reference refines only at steps it also updates
            if groups and self.on_maps is not None:
                self._watch(x, t, step, num_steps, cond, groups)
            return x
        for g in groups:
            self.check_group(g, _context_length(cond))
        threshold = self.threshold_at(step)
        target = self.refinement_target(threshold) if threshold is not None else None
        alpha = self.step_size(step, num_steps)
        z = x.detach().clone()
        with torch.enable_grad(), forced_checkpointing(self.config.checkpoint_guidance):
            pending = groups
            while pending:
                samples = [g.samples[0] for g in pending]
                leaf = z[samples].detach().requires_grad_(True)  # [b, C, h, w]
                maps = capture_pass(self.denoiser, self.capture_spec, leaf, t[samples], select_cond(cond, samples),
                                    self.truncate)  # fmt: skip
                self.num_forwards += 1
                self.num_sample_forwards += len(samples)
                if pending is groups and self.on_maps is not None:
                    kept = {g.samples[0]: self.view_maps(maps.rows([r]), g).detach().cpu()
                            for r, g in enumerate(groups)}  # fmt: skip
                    self.on_maps(StepMaps(step, num_steps, int(t[0]), kept, guided=True))
                updates = []
                for r, g in enumerate(pending):
                    loss = self._advance_group(g, maps.rows([r]), target)
                    if loss is not None and loss != 0:
                        if self._finite_or_warn(g, loss):
                            updates.append((r, g, loss))
                        else:
                            g.phase = "done"
                if updates:
                    grad = torch.autograd.grad(torch.stack([loss for _, _, loss in updates]).sum(), leaf)[0]
                    for r, g, _ in updates:
                        if self._finite_or_warn(g, grad[r]):
                            z[g.samples] = z[g.samples] - alpha * grad[r : r + 1].detach()  # A&E eq. 4
                        else:
                            g.phase = "done"
                pending = [g for g in pending if g.phase != "done"]
        records = [g.record | {"samples": g.samples} for g in groups]
        self.records.append({"step": step, "t": int(t[0]), "groups": records})
        return z


def _value(x: torch.Tensor) -> float:
    return float(x.detach())
