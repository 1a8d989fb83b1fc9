"""Noise schedules and DDIM discretisations (pure functions, numpy float64 like the original).

DDPM (Ho et al. 2020) forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), abar_t = prod_s (1 - beta_s).
DDIM (Song et al. 2021, eq. 12) sampling runs on a sub-sequence tau of the T training steps.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

logger = logging.getLogger(__name__)

DDIM_DISCRETIZATIONS = ("uniform", "uniform_exact", "quad")


def make_beta_schedule(
    schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2, cosine_s: float = 8e-3
) -> np.ndarray:
    """Betas [T] as float64. "linear" is the LDM/SD one: linspace(sqrt(start), sqrt(end), T) ** 2."""
    if schedule == "linear":
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64, device="cpu") ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=torch.float64, device="cpu") / n_timestep + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu")
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu") ** 0.5
    else:
        raise ValueError(f"Unknown beta_schedule '{schedule}'; use linear, cosine, sqrt_linear or sqrt.")
    return betas.numpy()


def make_ddim_timesteps(method: str, num_ddim_steps: int, num_train_steps: int) -> np.ndarray:
    """Ascending DDIM timesteps tau (each in [0, T-1]).

    "uniform" reproduces the original exactly: c = T // S, range(0, T, c) + 1, which runs more than S steps when
    S does not divide T (S=7 -> 8 steps). The original could then index step T (S=300 -> 1000); that out-of-range
    step is dropped here. "uniform_exact" gives exactly S evenly spread steps.
    """
    if num_ddim_steps < 1 or num_ddim_steps > num_train_steps:
        raise ValueError(f"ddim steps must be in 1..{num_train_steps}, got {num_ddim_steps}")
    if method == "uniform":
        c = num_train_steps // num_ddim_steps
        steps = np.asarray(list(range(0, num_train_steps, c))) + 1
        steps = steps[steps < num_train_steps]
    elif method == "uniform_exact":
        steps = (np.arange(num_ddim_steps) * num_train_steps) // num_ddim_steps + 1
        steps = steps[steps < num_train_steps]
        if len(steps) < num_ddim_steps:  # S == T: every step, starting at 0
            steps = np.arange(num_train_steps)
    elif method == "quad":
        steps = ((np.linspace(0, np.sqrt(num_train_steps * 0.8), num_ddim_steps)) ** 2).astype(int) + 1
    else:
        raise ValueError(f"Unknown ddim_discretize '{method}'; use one of {DDIM_DISCRETIZATIONS}.")
    if len(steps) != num_ddim_steps:
        logger.warning(
            "DDIM '%s' discretisation of %d steps runs %d steps (timesteps %d..%d); "
            "use 'uniform_exact' for exactly %d.",
            method,
            num_ddim_steps,
            len(steps),
            steps[0],
            steps[-1],
            num_ddim_steps,
        )
    return steps


def ddim_alphas(alphas_cumprod: torch.Tensor, ddim_timesteps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(abar_tau_i, abar_tau_{i-1}) as float32 tensors [S]; the first 'previous' is abar_0 as in the original."""
    idx = torch.as_tensor(ddim_timesteps, dtype=torch.long, device=alphas_cumprod.device)
    alphas = alphas_cumprod[idx].float()
    alphas_prev = torch.cat([alphas_cumprod[:1].float(), alphas[:-1]])
    return alphas, alphas_prev


def ddim_sigmas(alphas: torch.Tensor, alphas_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16: sigma = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)), float32 [S]."""
    a = alphas.double()
    a_prev = alphas_prev.double()
    return (eta * torch.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))).float()
