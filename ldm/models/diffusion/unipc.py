"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"),
the B(h) = e^h - 1 variant ("bh2") of order 2 on the data prediction, as diffusers' UniPCMultistepScheduler with an
SD 1.x/2.x config (solver_order 2, predict_x0, lower_order_final, final sigma 0).

With phi_1(x) = (e^x - 1) / x, phi_{k+1}(x) = (phi_k(x) - 1/k!) / x and, for a step from s to t, h = lambda_t -
lambda_s, hh = -h (data prediction), B = e^hh - 1:

    UniP (predictor, order p, data predictions m_0 at s and m_1 at an earlier s_1, r = (lambda_{s_1} - lambda_s) / h):
        z_t = (sigma_t / sigma_s) z_s - alpha_t (e^hh - 1) m_0 - alpha_t B rho_p (m_1 - m_0) / r,   rho_p = 1/2 (p = 2)
    UniC (corrector of z_t, once m_t, the model's data prediction at the predicted z_t, is known; order p):
        z_t^c = (sigma_t / sigma_s) z_s - alpha_t (e^hh - 1) m_0
                - alpha_t B (sum_k rho_k (m_k - m_0) / r_k + rho_p (m_t - m_0))
        with rho solving R rho = g, R_jk = r_k^(j-1) (r_p = 1), g_j = hh phi_{j+1}(hh) j! / B  (p = 1: rho = 1/2).

Each step evaluates the model once, at the predicted latent, corrects it with that evaluation (the evaluation itself
is kept, as the reference does), then predicts the next: no extra model call. The latent guidance hook runs before
the evaluation, on the predicted latent. Order: 1 at the first and the last step, else 2; the last step goes to
sigma 0 and returns m_t.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ldm.models.diffusion.sampler_base import StepFn, StepOptions
from ldm.models.diffusion.sigma_sampler import SigmaSampler


def corrector_weights(hh: float, rks: list[float]) -> list[float]:
    """rho of UniC of order len(rks) + 1 (B(h) = e^h - 1): solves R rho = g (order 1: [1/2])."""
    if not rks:
        return [0.5]
    b_h = math.expm1(hh)
    nodes = [*rks, 1.0]
    order = len(nodes)
    g, phi, factorial = [], math.expm1(hh) / hh, 1.0  # phi_1
    for j in range(1, order + 1):
        phi = (phi - 1.0 / factorial) / hh  # phi_{j+1}
        g.append(hh * phi * factorial / b_h)
        factorial *= j + 1
    r = torch.tensor([[node ** (j - 1) for node in nodes] for j in range(1, order + 1)], dtype=torch.float64)
    return torch.linalg.solve(r, torch.tensor(g, dtype=torch.float64)).tolist()


class UniPCSampler(SigmaSampler):
    name = "UniPC"
    rounded_timesteps = True

    def make_step(self, timesteps: list[float], options: StepOptions) -> StepFn:
        run = self.run
        n = len(timesteps)
        outputs: list[torch.Tensor] = []  # data predictions m of the earlier steps (newest last)
        state: dict[str, Any] = {"last": None, "order": 0}  # the corrected latent of the previous step, its order

        def terms(i: int, s: int, order: int) -> tuple[float, float, float, float, list[float]]:
            """(alpha_t, sigma_t / sigma_s, hh, B) from level s to level i, and r_k of the earlier levels."""
            (alpha_t, sigma_t), (_, sigma_s) = run.vp(i), run.vp(s)
            h = run.log_snr(i) - run.log_snr(s)
            rks = [(run.log_snr(s - k) - run.log_snr(s)) / h for k in range(1, order)]
            return alpha_t, sigma_t / sigma_s, -h, math.expm1(-h), rks

        def step(z: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            _, m_t = self.denoise(z, cond, ts, i, options)  # at the predicted (uncorrected) latent
            if i > 0:  # UniC on this step's latent, with the previous step's order
                alpha_t, ratio, hh, b_h, rks = terms(i, i - 1, state["order"])
                m0 = outputs[-1]
                rho = corrector_weights(hh, rks)
                correction = rho[-1] * (m_t - m0)
                for k, rk in enumerate(rks):
                    correction = correction + (rho[k] / rk) * (outputs[-2 - k] - m0)
                z = ratio * state["last"] - (alpha_t * math.expm1(hh)) * m0 - (alpha_t * b_h) * correction
            outputs.append(m_t)
            del outputs[:-2]
            order = min(2, n - i, i + 1)
            state.update(last=z, order=order)
            if run.sigmas[i + 1] == 0 and order == 1:  # to sigma 0: the data prediction itself
                return m_t, m_t
            alpha_t, ratio, hh, b_h, rks = terms(i + 1, i, order)
            z_next = ratio * z - (alpha_t * math.expm1(hh)) * m_t
            if rks:  # UniP of order 2: rho_p = 1/2
                z_next = z_next - (alpha_t * b_h * 0.5 / rks[0]) * (outputs[-2] - m_t)
            return z_next, m_t

        return step
