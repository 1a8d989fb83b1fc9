"""The settings of INITNO (``method.py`` has the sampling-time guidance, ``noise.py`` the start-noise optimisation).

Defaults are the official ones (xiefan-guo/initno ``run_sd_initno.py`` and the values ``pipeline_sd_initno.py``
hard-wires), for a 50-step schedule. Fields shared with Attend-and-Excite keep its names and meanings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ldm.guidance.attend_excite.config import SOFTMAX_ENDS, normalize_token_indices
from ldm.guidance.tokens import TokenGroup

__all__ = ["InitNOConfig"]


@dataclass(frozen=True)
class InitNOConfig:
    """Every knob of INITNO.

    Start-noise optimisation (before the first step; official ``fn_initno`` and the rounds around it):
        noise_rounds: rounds of optimisation, each from fresh noise, until one succeeds (0: no noise optimisation).
        round_steps: optimisation steps per round (the official 10).
        final_steps: when no round succeeds, the round with the lowest score is optimised again from its start noise
            for up to this many steps, and its result is used (the official 50).
        lr, adam_eps: Adam on (log variance, mean) of the reparameterised noise ``z = z_0 * exp(log_var / 2) + mu``.
        tau_cross, tau_self: a round succeeds once the response loss is below ``tau_cross`` and the conflict loss
            below ``tau_self`` (the paper's thresholds).
        kl_threshold: after each step, Adam steps on the KL term alone until it is at most this.
        self_gate: the conflict term counts only while the response loss is at most this.
        noise_clean_weight: weight of the official code's clean term while optimising the noise.
    Sampling (Attend-and-Excite-style updates of z_t; official ``__call__`` loop):
        attention_res: side of the attention maps (cross- and self-attention) the losses read.
        max_iter_to_alter: the regular update (gradient of the response loss) runs at steps ``i < max_iter_to_alter``.
        thresholds: ``{step: threshold}``; at these steps refine (gradient of the joint loss) while the response loss
            is above ``1 - threshold`` or the conflict loss above ``self_threshold``.
        self_threshold: the conflict target of the refinement.
        scale_factor, scale_range: step size ``scale_factor * sqrt(linspace(*scale_range, num_steps)[i])``.
        clean_weight, alignment_weight: weights of the clean and alignment terms in the refinement's joint loss.
        alignment_decay: the alignment term's moving average keeps this share of the old maps per guidance pass.
        max_refinement_steps: at most this many refinement iterations per threshold step.
        smooth_attentions, sigma, kernel_size, softmax_scale, softmax_end: the maps, as in Attend-and-Excite.
        schedule_steps: the step count ``thresholds`` and ``max_iter_to_alter`` were written for (rescaled to the
            run by Attend-and-Excite's ``scale_schedule``); ``None``: already absolute.
        checkpoint_guidance: recompute the UNet blocks of a guidance pass in its backward (less memory).
    """

    token_indices: tuple[int | TokenGroup, ...] = ()
    noise_rounds: int = 5
    round_steps: int = 10
    final_steps: int = 50
    lr: float = 1e-2
    adam_eps: float = 1e-3
    tau_cross: float = 0.2
    tau_self: float = 0.3
    kl_threshold: float = 1e-3
    self_gate: float = 0.5
    noise_clean_weight: float = 1.0
    attention_res: int = 16
    max_iter_to_alter: int = 25
    thresholds: Mapping[int, float] = field(default_factory=lambda: {10: 0.8, 20: 0.8})
    self_threshold: float = 0.3
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    clean_weight: float = 0.1
    alignment_weight: float = 0.1
    alignment_decay: float = 0.9
    max_refinement_steps: int = 20
    smooth_attentions: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    softmax_scale: float = 100.0
    softmax_end: str = "last"
    schedule_steps: int | None = 50
    checkpoint_guidance: bool = False

    def __post_init__(self) -> None:
        if self.softmax_end not in SOFTMAX_ENDS:
            raise ValueError(f"softmax_end must be one of {SOFTMAX_ENDS}, got {self.softmax_end!r}")
        if self.noise_rounds < 0 or self.max_refinement_steps < 0:
            raise ValueError("noise_rounds and max_refinement_steps must be >= 0")
        if self.noise_rounds > 0 and min(self.round_steps, self.final_steps) < 1:
            raise ValueError("round_steps and final_steps must be >= 1 while noise_rounds > 0 (noise_rounds 0 turns "
                             "the start-noise optimisation off)")  # fmt: skip
        if self.attention_res < 1 or self.kernel_size < 1:
            raise ValueError("attention_res and kernel_size must be >= 1")
        if not 0.0 <= self.alignment_decay <= 1.0:
            raise ValueError(f"alignment_decay must be in [0, 1], got {self.alignment_decay}")
        object.__setattr__(self, "thresholds", {int(k): float(v) for k, v in dict(self.thresholds).items()})
        object.__setattr__(self, "token_indices", normalize_token_indices(self.token_indices))
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))
