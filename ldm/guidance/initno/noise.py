"""INITNO's start-noise optimisation: before the first step, move x_T into the region where the subject tokens'
cross-attention responds and their self-attention does not conflict.

Per sample (the official ``fn_initno`` and the rounds around it in ``__call__``):

    z = z_0 * exp(log_var / 2) + mu,  log_var = mu = 0 at the start     (the paper's reparameterisation)
    each step: one guidance pass on z at the run's first timestep; L = L_ca + [L_ca <= self_gate] L_sa + w * clean
        stop ("success") when L_ca < tau_cross and the gated L_sa < tau_self (checked before the update);
        else one Adam step on (log_var, mu) with dL, then Adam steps on L_kl alone while L_kl > kl_threshold
    a round is ``round_steps`` such steps from fresh noise z_0 (round 0: x_T; round r: the next draw from the
    sample's generator); its score is L_ca + L_sa of its last evaluation (+1 when L_sa <= 1e-6, i.e. gated off)
    up to ``noise_rounds`` rounds, stopping at the first success; then the round with the lowest score (ties: the
    earlier) gives the start noise: its result if it succeeded, else ``final_steps`` steps more from its z_0.

A round that fails ends with the update of its last step, which was never evaluated; fresh noise is drawn after every
failed round (also the last, as the official loop does), so the generator moves on as it does there. The samples of a
batch run their own rounds, Adam states and KL loops, and share the UNet passes (one batched pass per step over the
samples still optimising). ``records`` per sample: every round's score, success, steps and KL steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ldm.guidance.capture import CapturedMaps, CaptureSpec, capture_plan, new_store
from ldm.guidance.denoiser import GuidanceDenoiser
from ldm.guidance.engine import SampleTarget
from ldm.guidance.initno.config import InitNOConfig
from ldm.guidance.initno.loss import InitNOTerms, initno_terms, kl_divergence
from ldm.models.diffusion.sampler_base import select_cond
from ldm.modules.attention_control import register_attention_controller
from ldm.modules.diffusionmodules.util import forced_checkpointing

__all__ = ["StartNoiseOptimizer", "capture_pass", "draw_noise"]


def capture_pass(
    denoiser: GuidanceDenoiser,
    spec: CaptureSpec,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    truncate: bool = True,
) -> CapturedMaps:
    """One guidance pass over ``z`` ``[b, C, h, w]`` (grad as the caller has it) and its maps, stopped after the last
    block the maps come from unless ``truncate`` is False."""
    plan = capture_plan(denoiser.unet, tuple(z.shape[-2:]), spec)
    store = new_store(spec)
    with register_attention_controller(denoiser.unet, store, layers=plan.layers):
        denoiser(z, t, cond, plan.stop_after if truncate else None)
    return CapturedMaps.collect(store, spec, z.shape[0])


def draw_noise(generator: Any, sample: int, like: torch.Tensor) -> torch.Tensor:
    """Fresh noise ``[1, C, h, w]`` for ``sample``: from its own generator (a list), the batch's, or the global RNG."""
    g = generator[sample] if isinstance(generator, (list, tuple)) else generator
    device = g.device if g is not None else like.device
    return torch.randn((1, *like.shape[1:]), generator=g, device=device, dtype=torch.float32).to(like.device)


@dataclass
class _Run:
    """One optimisation of one sample's noise: a round (``round_index`` >= 0) or the final run (-1)."""

    start: torch.Tensor  # z_0 [1, C, h, w]
    round_index: int
    steps: int
    log_var: torch.Tensor = field(init=False)
    mu: torch.Tensor = field(init=False)
    optimizer: torch.optim.Adam = field(init=False)
    step: int = 0
    kl_steps: int = 0
    score: float = float("inf")
    succeeded: bool = False

    def setup(self, lr: float, eps: float) -> None:
        self.log_var = torch.zeros_like(self.start).requires_grad_(True)
        self.mu = torch.zeros_like(self.start).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.log_var, self.mu], lr=lr, eps=eps)

    def latent(self) -> torch.Tensor:
        return self.start * torch.exp(0.5 * self.log_var) + self.mu  # [1, C, h, w]


@dataclass
class _Sample:
    index: int
    target: SampleTarget
    run: _Run
    pool: list[tuple[float, int, torch.Tensor, torch.Tensor, bool]] = field(default_factory=list)
    result: torch.Tensor | None = None
    record: dict = field(default_factory=lambda: {"rounds": []})


class StartNoiseOptimizer:
    """Optimises the start noise of a batch (see the module docstring); ``__call__`` returns the new x_T."""

    def __init__(
        self, denoiser: GuidanceDenoiser, config: InitNOConfig, spec: CaptureSpec, truncate: bool = True
    ) -> None:
        self.denoiser = denoiser
        self.config = config
        self.spec = spec
        self.truncate = truncate
        self.num_forwards = 0
        self.num_sample_forwards = 0
        self.records: dict[int, dict] = {}
        # observers (tests, viewers): every evaluation (sample, round (-1: final run), step, z [1, C, h, w], terms)
        # and every finished run (sample, round, start z_0, result)
        self.on_evaluation: Callable[[int, int, int, torch.Tensor, InitNOTerms], None] | None = None
        self.on_run_end: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: Any, targets: Sequence[SampleTarget | None], generator: Any
    ) -> torch.Tensor:
        """``x`` ``[B, C, h, w]`` the drawn x_T, ``t`` ``[B]`` the first timestep, ``targets[b]`` None: unguided."""
        cfg = self.config
        samples = [_Sample(b, tg, self._new_run(x[b : b + 1], 0, cfg.round_steps)) for b, tg in enumerate(targets)
                   if tg is not None]  # fmt: skip
        with torch.enable_grad(), forced_checkpointing(cfg.checkpoint_guidance):
            active = list(samples)
            while active:
                self._step(active, t, cond, generator, x)
                active = [s for s in samples if s.result is None]
        out = x.clone()
        for s in samples:
            out[s.index] = s.result[0]
            self.records[s.index] = s.record
        return out

    def _new_run(self, start: torch.Tensor, round_index: int, steps: int) -> _Run:
        run = _Run(start.detach().clone(), round_index, steps)
        run.setup(self.config.lr, self.config.adam_eps)
        return run

    def _step(self, active: list[_Sample], t: torch.Tensor, cond: Any, generator: Any, like: torch.Tensor) -> None:
        """One optimisation step of every active sample: a batched pass, then each sample's update or run end."""
        cfg = self.config
        rows = [s.index for s in active]
        z = torch.cat([s.run.latent() for s in active])  # [b, C, h, w], in the graph of each sample's (log_var, mu)
        maps = capture_pass(self.denoiser, self.spec, z, t[rows], select_cond(cond, rows), self.truncate)
        self.num_forwards += 1
        self.num_sample_forwards += len(active)
        to_update, finished = [], []
        for r, s in enumerate(active):
            row = maps.rows([r])
            terms = initno_terms(row.cross[cfg.attention_res], row.self_attention[cfg.attention_res],
                                 s.target.token_groups, cfg, s.target.eot)  # fmt: skip
            if self.on_evaluation is not None:
                self.on_evaluation(s.index, s.run.round_index, s.run.step, z[r : r + 1].detach(), terms)
            conflict = terms.conflict * 0 if terms.cross > cfg.self_gate else terms.conflict  # gated L_sa
            joint = terms.cross + conflict + terms.clean * cfg.noise_clean_weight
            gated = conflict.detach()
            s.run.score = float(terms.cross.detach() + (gated + 1.0 if gated <= 1e-6 else gated))  # of the last pass
            if terms.cross < cfg.tau_cross and conflict < cfg.tau_self:
                s.run.succeeded = True
                finished.append(s)
            else:
                to_update.append((s, joint))
        if to_update:  # one backward: samples are independent in the UNet, so each gets its own loss's gradient
            params = [p for s, _ in to_update for p in (s.run.log_var, s.run.mu)]
            grads = torch.autograd.grad(torch.stack([joint for _, joint in to_update]).sum(), params)
            for p, g in zip(params, grads):
                p.grad = g
        for s, _ in to_update:
            s.run.optimizer.step()
            self._kl_steps(s.run)
            s.run.step += 1
            if s.run.step >= s.run.steps:
                finished.append(s)
        for s in finished:
            self._end_run(s, generator, like)

    def _kl_steps(self, run: _Run) -> None:
        """Adam steps on L_kl alone until it is at most ``kl_threshold`` (official: after every update)."""
        kl = kl_divergence(run.log_var, run.mu)
        while kl > self.config.kl_threshold:
            run.optimizer.zero_grad()
            kl.backward()
            run.optimizer.step()
            run.kl_steps += 1
            kl = kl_divergence(run.log_var, run.mu)

    def _end_run(self, s: _Sample, generator: Any, like: torch.Tensor) -> None:
        """Close the sample's run: pool a round and start the next round or the final run, or take the result."""
        cfg, run = self.config, s.run
        with torch.no_grad():
            optimized = run.latent().detach()
        score = run.score
        s.record["rounds"].append({"round": run.round_index, "score": score, "succeeded": run.succeeded,
                                   "steps": run.step, "kl_steps": run.kl_steps})  # fmt: skip
        if self.on_run_end is not None:
            self.on_run_end(s.index, run.round_index, run.start, optimized)
        if run.round_index < 0:  # the final run: its result is used whatever it reached
            s.result = optimized
            return
        s.pool.append((score, run.round_index, optimized, run.start, run.succeeded))
        if not run.succeeded:
            fresh = draw_noise(generator, s.index, like)  # drawn after every failed round, as the official loop does
            if run.round_index + 1 < cfg.noise_rounds:
                s.run = self._new_run(fresh, run.round_index + 1, cfg.round_steps)
                return
        _, best_round, best_latent, best_start, best_succeeded = min(s.pool, key=lambda p: (p[0], p[1]))
        s.record["best_round"] = best_round
        if best_succeeded:
            s.result = best_latent
        else:
            s.record["final_run"] = True
            s.run = self._new_run(best_start, -1, cfg.final_steps)
