"""DDPM (Ho et al. 2020): schedule buffers, forward process and the training loss (no sampling loops).

`LatentDiffusion` (latent_diffusion.py) builds on it; both are importable from `ldm.models.diffusion.ddpm`, the
path the original configs use.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from ldm.models.diffusion.schedule import make_beta_schedule
from ldm.modules.ema import LitEma
from ldm.util import count_params, default, instantiate_from_config

logger = logging.getLogger(__name__)

# What the denoiser predicts: the noise eps, the clean sample x0, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
# (Salimans & Ho 2022, "progressive distillation"; SD 2.x 768 models).
PARAMETERIZATIONS = ("eps", "x0", "v")

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for `.train()` on frozen sub-models, so Lightning cannot switch them back to training mode."""
    return self


def freeze(module: nn.Module) -> None:
    module.eval()
    module.train = disabled_train.__get__(module)
    for p in module.parameters():
        p.requires_grad = False


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: tuple[int, ...]) -> torch.Tensor:
    """a[t] reshaped to [B, 1, 1, 1] for broadcasting against x."""
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


class DiffusionWrapper(nn.Module):
    """Holds the UNet as `diffusion_model` (state_dict prefix `model.diffusion_model.`) and routes conditioning."""

    def __init__(self, diff_model_config: Any, conditioning_key: str | None) -> None:
        super().__init__()
        self.diffusion_model = instantiate_from_config(diff_model_config)
        if conditioning_key not in (None, "concat", "crossattn", "hybrid", "adm", "crossattn-adm"):
            raise ValueError(f"Unknown conditioning_key '{conditioning_key}'")
        self.conditioning_key = conditioning_key

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: list | None = None,
        c_crossattn: list | None = None,
        c_adm: list | torch.Tensor | None = None,
        **unet_kwargs: Any,
    ):
        """Route the conditioning to the UNet by ``conditioning_key``; ``unet_kwargs`` (e.g. ``stop_after`` of a
        guidance pass) go to the UNet unchanged. ``crossattn-adm``: context and the vector ``y`` (``c_adm``)."""
        key = self.conditioning_key
        net = self.diffusion_model
        if key is None:
            return net(x, t, **unet_kwargs)
        if key == "concat":
            return net(torch.cat([x, *c_concat], dim=1), t, **unet_kwargs)
        if key == "crossattn":
            return net(x, t, context=torch.cat(c_crossattn, 1), **unet_kwargs)
        if key == "hybrid":
            return net(torch.cat([x, *c_concat], dim=1), t, context=torch.cat(c_crossattn, 1), **unet_kwargs)
        if key == "crossattn-adm":
            y = torch.cat(c_adm, 1) if isinstance(c_adm, (list, tuple)) else c_adm
            return net(x, t, context=torch.cat(c_crossattn, 1), y=y, **unet_kwargs)
        return net(x, t, y=c_crossattn[0], **unet_kwargs)


class DDPM(pl.LightningModule):
    """Gaussian diffusion in pixel space; the base of LatentDiffusion."""

    def __init__(
        self,
        unet_config: Any,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        loss_type: str = "l2",
        ckpt_path: str | None = None,
        ignore_keys: list[str] | tuple[str, ...] = (),
        load_only_unet: bool = False,
        monitor: str = "val/loss",
        use_ema: bool = True,
        first_stage_key: str = "image",
        image_size: int = 256,
        channels: int = 3,
        log_every_t: int = 100,
        clip_denoised: bool = True,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        given_betas: list[float] | None = None,
        original_elbo_weight: float = 0.0,
        embedding_reg_weight: float = 0.0,
        unfreeze_model: bool = False,
        model_lr: float = 0.0,
        v_posterior: float = 0.0,
        l_simple_weight: float = 1.0,
        conditioning_key: str | None = None,
        parameterization: str = "eps",
        scheduler_config: Any = None,
        use_positional_encodings: bool = False,
        learn_logvar: bool = False,
        logvar_init: float = 0.0,
        ema_decay: float = 0.9999,
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS} (model.params.parameterization), "
                f"got {parameterization!r}"
            )
        self.parameterization = parameterization
        self.cond_stage_model = None
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.use_positional_encodings = use_positional_encodings
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        count_params(self.model, verbose=True)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self.scheduler_config = scheduler_config
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.embedding_reg_weight = embedding_reg_weight
        self.unfreeze_model = unfreeze_model
        self.model_lr = model_lr
        if monitor is not None:
            self.monitor = monitor
        self.register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.loss_type = loss_type
        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), logvar_init)
        if learn_logvar:
            self.logvar = nn.Parameter(logvar, requires_grad=True)
        else:
            self.register_buffer("logvar", logvar, persistent=False)
        self.learning_rate = 1.0e-4
        if ckpt_path:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)

    def register_schedule(
        self,
        given_betas: list[float] | None = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """Schedule buffers (computed in float64, stored float32) with the original names."""
        if given_betas is not None:
            betas = np.asarray(given_betas, dtype=np.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.num_timesteps = int(betas.shape[0])
        self.linear_start, self.linear_end = linear_start, linear_end
        # DDPM eq. 7: posterior q(x_{t-1} | x_t, x_0) variance and mean coefficients.
        posterior_variance = (1 - self.v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (
            1.0 - alphas_cumprod
        ) + self.v_posterior * betas
        values = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        }
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(values[name], dtype=torch.float32))
        with np.errstate(divide="ignore"):  # posterior_variance[0] == 0; entry 0 is replaced below
            if self.parameterization == "eps":
                lvlb = betas**2 / (2 * posterior_variance * alphas * (1 - alphas_cumprod))
            elif self.parameterization == "x0":
                lvlb = 0.5 * np.sqrt(alphas_cumprod) / (2.0 * (1 - alphas_cumprod))
            else:  # v: the reference weights every step equally
                lvlb = np.ones_like(betas)
        lvlb[0] = lvlb[1]
        self.register_buffer("lvlb_weights", torch.tensor(lvlb, dtype=torch.float32), persistent=False)

    @contextmanager
    def ema_scope(self, context: str | None = None):
        """Temporarily swap in the EMA weights (no-op without EMA)."""
        if self.use_ema:
            self.model_ema.store(self.model.parameters())
            self.model_ema.copy_to(self.model)
            if context is not None:
                logger.info("%s: switched to EMA weights", context)
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.model.parameters())

    def init_from_ckpt(
        self, path: str, ignore_keys: list[str] | tuple[str, ...] = (), only_model: bool = False
    ) -> list[str]:
        """Load ``path`` non-strictly; returns the model's keys the checkpoint did not provide."""
        from ldm.util import load_state_dict_file, load_state_dict_into

        sd = load_state_dict_file(path)
        sd = {k: v for k, v in sd.items() if not any(k.startswith(ik) for ik in ignore_keys)}
        target = self.model if only_model else self
        if only_model:
            sd = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
        missing, _ = load_state_dict_into(target, sd, strict=False, source=f"Checkpoint '{path}'")
        if self.use_ema and not only_model and any(k.startswith("model_ema.") for k in missing):
            # A file without EMA buffers (an export, a warm start): average from the loaded weights, not random ones.
            logger.info("%s has no EMA weights; the EMA starts from its model weights", path)
            self.model_ema = LitEma(self.model, decay=float(self.model_ema.decay))
        return missing

    # --- forward process -------------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDPM eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        return (
            extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise
        )

    def predict_start_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_t.shape) * x_t
            - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v
        )

    def predict_eps_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_t.shape) * v
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * x_t
        )

    def predict_eps_from_start(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1) (inverse of predict_start_from_noise)."""
        return (
            extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start
        ) / extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def get_v(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-parameterization target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * noise
            - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start
        )

    def eps_from_model_output(
        self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, alphas_cumprod: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The one place a (CFG-combined) model output becomes eps, for every sampler and parameterization.
        ``alphas_cumprod`` [B]: abar of x_t's noise level where it is not the schedule's at ``t`` (sigma samplers)."""
        if self.parameterization == "eps":
            return model_output
        if alphas_cumprod is not None:
            abar = alphas_cumprod.to(x_t.dtype).reshape(-1, *((1,) * (x_t.dim() - 1)))  # [B, 1, 1, 1]
            if self.parameterization == "v":  # eps = sqrt(abar) v + sqrt(1 - abar) x_t
                return abar.sqrt() * model_output + (1.0 - abar).sqrt() * x_t
            return (x_t / abar.sqrt() - model_output) / (1.0 / abar - 1.0).sqrt()  # from x_0
        if self.parameterization == "v":
            return self.predict_eps_from_z_and_v(x_t, t, model_output)
        return self.predict_eps_from_start(x_t, t, model_output)

    def training_target(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output: eps, x_0, or v."""
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "v":
            return self.get_v(x_start, noise, t)
        return x_start

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """DDPM eq. 6-7: mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        var = extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_var = extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, log_var

    # --- training --------------------------------------------------------------------------------------------
    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        if self.loss_type == "l1":
            loss = (target - pred).abs()
        elif self.loss_type == "l2":
            loss = torch.nn.functional.mse_loss(target, pred, reduction="none")
        else:
            raise NotImplementedError(f"unknown loss type '{self.loss_type}'")
        return loss.mean() if mean else loss

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None, **unet_kwargs: Any) -> torch.Tensor:
        return self.model(x_noisy, t, **unet_kwargs)

    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Simple loss (DDPM eq. 14) weighted by the learned/fixed log-variance, plus optional VLB and TI terms."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)
        target = self.training_target(x_start, noise, t)
        prefix = "train" if self.training else "val"
        per_sample = self.get_loss(model_output, target, mean=False).mean(dim=(1, 2, 3))  # [B]
        loss_dict = {f"{prefix}/loss_simple": per_sample.mean()}
        logvar_t = self.logvar[t].to(x_start.device)
        loss = per_sample / torch.exp(logvar_t) + logvar_t
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss.mean()
            loss_dict["logvar"] = self.logvar.data.mean()
        loss = self.l_simple_weight * loss.mean()
        loss_vlb = (self.lvlb_weights[t] * per_sample).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        embedding_manager = getattr(self, "embedding_manager", None)
        if self.embedding_reg_weight > 0 and embedding_manager is not None:
            reg = embedding_manager.embedding_to_coarse_loss().mean()
            loss_dict[f"{prefix}/loss_emb_reg"] = reg
            loss = loss + self.embedding_reg_weight * reg
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def get_input(self, batch: dict, k: str) -> torch.Tensor:
        x = batch[k]
        if x.dim() == 3:
            x = x[..., None]
        return x.permute(0, 3, 1, 2).contiguous().float()  # HWC -> CHW

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        return self.p_losses(x, None, t, *args, **kwargs)

    def shared_step(self, batch: dict):
        x = self.get_input(batch, self.first_stage_key)
        return self(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        batch_size = len(next(iter(batch.values())))
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True, on_epoch=False)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        batch_size = len(next(iter(batch.values())))
        _, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=False, logger=True, on_step=False, on_epoch=True, batch_size=batch_size)
        if self.use_ema:
            with self.ema_scope():
                _, loss_dict_ema = self.shared_step(batch)
            loss_dict_ema = {k + "_ema": v for k, v in loss_dict_ema.items()}
            self.log_dict(loss_dict_ema, logger=True, on_step=False, on_epoch=True, batch_size=batch_size)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.use_ema:
            self.model_ema(self.model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=self.learning_rate)
        if self.scheduler_config is None:
            return opt
        scheduler = instantiate_from_config(self.scheduler_config)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=scheduler.schedule)
        return [opt], [{"scheduler": lr_scheduler, "interval": "step", "frequency": 1}]
