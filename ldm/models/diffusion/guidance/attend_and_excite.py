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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ldm.models.diffusion.guidance.smoothing import smooth_maps
from ldm.modules.attention_control import AttentionStore, register_attention_controller
from ldm.modules.diffusionmodules.util import forced_checkpointing

logger = logging.getLogger(__name__)

TokenGroup = tuple[int, ...]
LOSS_REDUCTIONS = ("per_sample", "shared")
SOFTMAX_ENDS = ("last", "eot")


@dataclass(frozen=True)
class AttendExciteConfig:
    """Every knob of Attend-and-Excite; defaults are the official ones (AE ``RunConfig``, 50-step schedule).

    Attributes:
        token_indices: positions to excite in the padded 77-token sequence (0 is the start token). An entry may be a
            tuple of positions (a word split into sub-tokens, a multi-vector placeholder): its score is the max over
            them. Empty: no guidance.
        attention_res: side of the cross-attention maps used (16: 16x16 maps).
        max_iter_to_alter: the regular update runs at steps ``i < max_iter_to_alter`` (absolute step indices).
        thresholds: ``{step: threshold}``; at these steps refine until every token's max attention reaches it.
        scale_factor, scale_range: step size ``scale_factor * sqrt(linspace(*scale_range, num_steps)[i])``.
        smooth_attentions, sigma, kernel_size: Gaussian smoothing; ``sigma`` is the reference's nominal sigma
            (its kernel has std ``sigma * sqrt(2)``, see ``smoothing.py``).
        softmax_scale: the maps are multiplied by this before the softmax over text positions (the reference's 100).
        softmax_end: ``"last"`` keeps positions ``[1:-1]`` (reference); ``"eot"`` cuts at the end-of-text token
            (the reference's ``sd_2_1`` normalisation).
        max_refinement_steps: at most this many refinement iterations per threshold step.
        loss_reduction: ``"per_sample"`` (diffusers) or ``"shared"``: one loss on the maps averaged over the batch,
            as the earlier LDM fork did.
        schedule_steps: the step count ``thresholds`` and ``max_iter_to_alter`` were written for; the scripts rescale
            them to the steps actually run with :func:`scale_schedule`. ``None``: already absolute.
        checkpoint_guidance: recompute the UNet blocks of the guidance pass in its backward (gradient checkpointing,
            whatever the config's ``use_checkpoint``): less activation memory for one more forward of the blocks per
            backward (README "Benchmarks"). Off: sampling never recomputes.
    """

    token_indices: tuple[int | TokenGroup, ...] = ()
    attention_res: int = 16
    max_iter_to_alter: int = 25
    thresholds: Mapping[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    smooth_attentions: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    softmax_scale: float = 100.0
    softmax_end: str = "last"
    max_refinement_steps: int = 20
    loss_reduction: str = "per_sample"
    schedule_steps: int | None = 50
    checkpoint_guidance: bool = False

    def __post_init__(self) -> None:
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.softmax_end not in SOFTMAX_ENDS:
            raise ValueError(f"softmax_end must be one of {SOFTMAX_ENDS}, got {self.softmax_end!r}")
        if self.attention_res < 1 or self.max_refinement_steps < 0 or self.kernel_size < 1:
            raise ValueError("attention_res and kernel_size must be >= 1 and max_refinement_steps >= 0")
        object.__setattr__(self, "thresholds", {int(k): float(v) for k, v in dict(self.thresholds).items()})
        object.__setattr__(self, "token_indices", normalize_token_indices(self.token_indices))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))


def normalize_token_indices(indices: Sequence[int | Sequence[int]]) -> tuple[TokenGroup, ...]:
    """``[2, (4, 5)]`` -> ``((2,), (4, 5))``."""
    return tuple((int(i),) if isinstance(i, (int, np.integer)) else tuple(int(j) for j in i) for i in indices)


def scale_schedule(config: AttendExciteConfig, num_steps: int) -> AttendExciteConfig:
    """Rescale a schedule written for ``config.schedule_steps`` steps to ``num_steps``: step i -> round(i*S/base).

    Rounding is half-up. Where two thresholds land on one step the higher threshold wins. 10 steps turn the official
    ``{0: .05, 10: .5, 20: .8}``, ``max_iter_to_alter`` 25 into ``{0: .05, 2: .5, 4: .8}`` and 5. A config whose
    ``schedule_steps`` is None is returned unchanged.
    """
    base = config.schedule_steps
    if base is None:
        return config

    def rescale(i: int) -> int:
        return int(math.floor(i * num_steps / base + 0.5))

    thresholds: dict[int, float] = {}
    for step, thr in config.thresholds.items():
        new = rescale(step)
        thresholds[new] = max(thr, thresholds.get(new, -math.inf))
    return replace(
        config, thresholds=thresholds, max_iter_to_alter=rescale(config.max_iter_to_alter), schedule_steps=None
    )


def step_size(config: AttendExciteConfig, step: int, num_steps: int) -> float:
    """alpha_i = scale_factor * sqrt(linspace(scale_range[0], scale_range[1], num_steps)[i]) (float64 like numpy)."""
    scale_range = np.linspace(config.scale_range[0], config.scale_range[1], num_steps)
    return float(config.scale_factor * np.sqrt(scale_range[step]))


def token_attention_maps(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """The (smoothed) attention map of every position in ``groups`` from one map ``[res, res, 77]``: ``[P, r, r]``.

    Softmax of ``softmax_scale * maps`` over the positions ``[1:end]`` (end = -1, or the end-of-text position),
    then the reference Gaussian per position.
    """
    end = -1 if config.softmax_end == "last" or eot_position is None else eot_position
    maps = maps.float()  # half-precision models: the softmax, smoothing and loss run in float32
    attn = torch.softmax(maps[:, :, 1:end] * config.softmax_scale, dim=-1)  # [r, r, n_kept]
    positions = [p - 1 for group in groups for p in group]
    selected = attn[:, :, positions].permute(2, 0, 1)  # [P, r, r]
    if config.smooth_attentions:
        selected = smooth_maps(selected, config.kernel_size, config.sigma)
    return selected


def max_attention_per_token(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """Per-token score m_k ``[K]``: the spatial max of each position's smoothed map, max over a group's positions."""
    per_position = token_attention_maps(maps, groups, config, eot_position).flatten(1).max(dim=1).values  # [P]
    scores, start = [], 0
    for group in groups:
        scores.append(per_position[start : start + len(group)].max())
        start += len(group)
    return torch.stack(scores)  # [K]


def attend_excite_loss(scores: torch.Tensor) -> torch.Tensor:
    """L = max_k max(0, 1 - m_k) (eq. 3)."""
    return (1.0 - scores).max().clamp_min(0.0)


def blocks_at_resolution(unet: nn.Module, latent_hw: tuple[int, int], res: int) -> list[str]:
    """Names of the UNet blocks whose cross-attention maps are ``res x res`` for a latent of ``latent_hw``."""
    h, w = latent_hw
    names = [name for name, ds in unet.attention_block_ds.items() if h // ds == res and w // ds == res]
    if not names:
        if h != w:
            raise ValueError(f"Attend-and-Excite needs square attention maps; the latent is {h}x{w} (use --H == --W)")
        # only sides the UNet really makes: a latent side that its downsampling does not divide makes none valid
        bottom = 2 ** (len(unet.channel_mult) - 1)
        sides = sorted({h // ds for ds in unet.attention_block_ds.values()}, reverse=True) if h % bottom == 0 else []
        hint = (
            f"set --ae_attention_res to one of {sides}" if sides else f"the latent side must be a multiple of {bottom}"
        )
        raise ValueError(
            f"attention_res {res}: no cross-attention layer makes {res}x{res} maps for a {h}x{w} latent; {hint}"
        )
    order = unet.block_names
    return sorted(names, key=order.index)


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
        context = _context_of(cond)  # [B, 77, D]
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
        maps = capture_token_maps(self.unet, x[sel], t[sel], _context_of(cond)[sel], indices, self.config, eots)
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


def _context_of(cond: Any) -> torch.Tensor:
    """The cross-attention context ``[B, 77, D]`` from a tensor, a list of tensors or the ``c_crossattn`` dict."""
    if isinstance(cond, dict):
        cond = cond["c_crossattn"]
    if isinstance(cond, list):
        cond = torch.cat(cond, dim=1)
    return cond


def group_token_maps(
    maps: torch.Tensor, groups: Sequence[TokenGroup], config: AttendExciteConfig, eot_position: int | None = None
) -> torch.Tensor:
    """Each token group's smoothed map from one map ``[r, r, 77]``: ``[K, r, r]``, the max over a group's positions
    (the spatial max of a group's map is its score m_k)."""
    per_position = token_attention_maps(maps, groups, config, eot_position)  # [P, r, r]
    sizes = [len(g) for g in groups]
    return torch.stack([part.max(dim=0).values for part in per_position.split(sizes)])  # [K, r, r]


@dataclass
class StepMaps:
    """What ``AttendAndExcite(on_maps=...)`` hands over at one step."""

    step: int  # 0-based step of the run
    num_steps: int
    t: int  # the timestep of the step
    maps: dict[int, torch.Tensor]  # sample -> smoothed token-group maps [K, r, r] (CPU) at the latent entering the step
    guided: bool  # True: from the step's guidance pass; False: from a capture-only pass (a step without guidance)


@torch.no_grad()
def capture_token_maps(
    unet: nn.Module,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    token_indices: Sequence[Sequence[int | Sequence[int]]],
    config: AttendExciteConfig,
    eot_positions: Sequence[int | None] | None = None,
) -> list[torch.Tensor]:
    """The maps the loss looks at, for display: per sample ``[K, r, r]`` on the CPU (see :func:`group_token_maps`).

    One conditional pass (stopped after the last block at ``attention_res``) over ``z`` ``[B, C, h, w]`` at ``t``;
    ``eot_positions`` (per sample) matter only with ``softmax_end="eot"``.
    """
    context = _context_of(cond)
    capture = blocks_at_resolution(unet, tuple(z.shape[-2:]), config.attention_res)
    store = AttentionStore([config.attention_res])
    with register_attention_controller(unet, store, layers=capture):
        unet(z, t, context=context, stop_after=capture[-1])
    maps = store.aggregate(z.shape[0], config.attention_res)  # [B, r, r, 77]
    eots = list(eot_positions) if eot_positions is not None else [None] * z.shape[0]
    return [
        group_token_maps(maps[b], normalize_token_indices(indices), config, eots[b]).cpu()
        for b, indices in enumerate(token_indices)
    ]
