"""Learning-rate multipliers for `torch.optim.lr_scheduler.LambdaLR` (the `scheduler_config` of the LDM configs)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


class LambdaWarmUpCosineScheduler:
    """Linear warm-up from lr_start to lr_max, then cosine decay to lr_min at max_decay_steps."""

    def __init__(
        self,
        warm_up_steps: int,
        lr_min: float,
        lr_max: float,
        lr_start: float,
        max_decay_steps: int,
        verbosity_interval: int = 0,
    ) -> None:
        self.lr_warm_up_steps = warm_up_steps
        self.lr_start, self.lr_min, self.lr_max = lr_start, lr_min, lr_max
        self.lr_max_decay_steps = max_decay_steps
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int) -> float:
        if n < self.lr_warm_up_steps:
            return float((self.lr_max - self.lr_start) / self.lr_warm_up_steps * n + self.lr_start)
        t = min((n - self.lr_warm_up_steps) / (self.lr_max_decay_steps - self.lr_warm_up_steps), 1.0)
        # a Python float: the optimizer stores it, and checkpoints must hold no numpy objects (weights_only loads)
        return float(self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + np.cos(t * np.pi)))

    def __call__(self, n: int) -> float:
        return self.schedule(n)


class LambdaLinearScheduler:
    """Per-cycle linear warm-up from f_start to f_max, then linear change to f_min over the cycle."""

    def __init__(
        self,
        warm_up_steps: list[int],
        f_min: list[float],
        f_max: list[float],
        f_start: list[float],
        cycle_lengths: list[int],
        verbosity_interval: int = 0,
    ) -> None:
        if not len(warm_up_steps) == len(f_min) == len(f_max) == len(f_start) == len(cycle_lengths):
            raise ValueError("warm_up_steps, f_min, f_max, f_start and cycle_lengths need one entry per cycle")
        self.lr_warm_up_steps = warm_up_steps
        self.f_start, self.f_min, self.f_max = f_start, f_min, f_max
        self.cycle_lengths = cycle_lengths
        self.cum_cycles = np.cumsum([0, *list(cycle_lengths)])
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        for interval, cl in enumerate(self.cum_cycles[1:]):
            if n <= cl:
                return interval
        return len(self.cycle_lengths) - 1

    def schedule(self, n: int) -> float:
        cycle = self.find_in_interval(n)
        n = n - int(self.cum_cycles[cycle])
        if n < self.lr_warm_up_steps[cycle]:
            f = (self.f_max[cycle] - self.f_start[cycle]) / self.lr_warm_up_steps[cycle] * n + self.f_start[cycle]
        else:
            f = (
                self.f_min[cycle]
                + (self.f_max[cycle] - self.f_min[cycle])
                * (self.cycle_lengths[cycle] - n)
                / (self.cycle_lengths[cycle])
            )
        return float(f)  # a Python float (see LambdaWarmUpCosineScheduler.schedule)

    def __call__(self, n: int) -> float:
        return self.schedule(n)
