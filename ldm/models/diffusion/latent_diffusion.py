"""LatentDiffusion (Rombach et al. 2022) with the Textual Inversion additions (Gal et al. 2022).

Diffusion runs on z = scale_factor * E(x) of a frozen first stage; the denoiser is conditioned on text through
cross-attention. With a `personalization_config` the model is in inversion mode: an `EmbeddingManager` owns the
placeholder vectors, and everything else is frozen unless `unfreeze_model`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ldm.models.diffusion.gaussian_diffusion import DDPM, freeze
from ldm.models.diffusion.image_logging import log_images
from ldm.models.diffusion.posterior_cache import PosteriorCache, batch_cache_keys
from ldm.modules.diffusionmodules.util import compile_diffusion_model, forced_checkpointing
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.skip_init import reinit_unloaded, skip_random_init
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)


class LatentDiffusion(DDPM):
    def __init__(
        self,
        first_stage_config: Any,
        cond_stage_config: Any,
        personalization_config: Any = None,
        num_timesteps_cond: int | None = None,
        cond_stage_key: str = "image",
        cond_stage_trainable: bool = False,
        concat_mode: bool = True,
        cond_stage_forward: str | None = None,
        conditioning_key: str | None = None,
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        cache_first_stage: bool = True,
        compile_unet: bool = False,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.num_timesteps_cond = num_timesteps_cond or 1
        self.scale_by_std = scale_by_std
        if self.num_timesteps_cond > kwargs.get("timesteps", 1000):
            raise ValueError("num_timesteps_cond must not exceed timesteps")
        if conditioning_key is None:
            conditioning_key = "concat" if concat_mode else "crossattn"
        if cond_stage_config == "__is_unconditional__":
            conditioning_key = None
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", [])
        # Weights that `ckpt_path` overwrites are not drawn at random first (start-up time, see
        # docs/benchmarks.md "Start-up"). An EMA copy is made from the initial weights, so a model with EMA is built
        # the ordinary way.
        skip_init = bool(ckpt_path) and not kwargs.get("use_ema", True)
        with skip_random_init(skip_init):
            networks = (first_stage_config, cond_stage_config, conditioning_key, scale_factor, cond_stage_trainable)
            self._build(*networks, args, kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_key = cond_stage_key
        self.cond_stage_forward = cond_stage_forward
        self.clip_denoised = False
        self.embedding_manager = None
        # Posteriors of batches that say which image and flip they hold (the personalized datasets do).
        self.posterior_cache = PosteriorCache() if cache_first_stage else None
        self.restarted_from_ckpt = False
        if ckpt_path:
            # Base weights first, so initializer words are looked up in the trained token-embedding table.
            # The checkpoint's own embedding_manager.* entries (if any) are not used: -r restores a run's embeddings,
            # `embedding_manager_ckpt` loads a saved file.
            missing = self.init_from_ckpt(ckpt_path, [*ignore_keys, "embedding_manager."])
            if skip_init:
                reinit_unloaded(self, set(self.state_dict()) - set(missing))
            self.restarted_from_ckpt = True
        if compile_unet:
            compile_diffusion_model(self.model.diffusion_model)
        if personalization_config is not None:
            if not self.unfreeze_model:
                freeze(self.model)
                if isinstance(self.cond_stage_model, nn.Module):
                    freeze(self.cond_stage_model)
            self.embedding_manager = instantiate_from_config(personalization_config, embedder=self.cond_stage_model)
            for param in self.embedding_manager.embedding_parameters():
                param.requires_grad = True
            if not self.unfreeze_model:
                # Frozen-run checkpoints hold only the embeddings (on_save_checkpoint): resume loads them non-strictly;
                # the frozen weights come again from `ckpt_path`.
                self.strict_loading = False

    def _build(
        self, first_stage_config: Any, cond_stage_config: Any, conditioning_key: Any, scale_factor: float,
        cond_stage_trainable: bool, args: tuple, kwargs: dict,
    ) -> None:  # fmt: skip
        """The networks (UNet through ``DDPM.__init__``, first and cond stages) and their settings."""
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)
        self.cond_stage_trainable = cond_stage_trainable
        params = first_stage_config.get("params", {}) if hasattr(first_stage_config, "get") else {}
        self.num_downs = len(params["ddconfig"]["ch_mult"]) - 1 if "ddconfig" in params else 0
        if self.scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        else:
            self.scale_factor = scale_factor
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)

    def instantiate_first_stage(self, config: Any) -> None:
        self.first_stage_model = instantiate_from_config(config)
        freeze(self.first_stage_model)

    def instantiate_cond_stage(self, config: Any) -> None:
        if config == "__is_first_stage__":
            logger.info("Using the first stage also as the cond stage.")
            self.cond_stage_model = self.first_stage_model
        elif config == "__is_unconditional__":
            self.cond_stage_model = None
        else:
            self.cond_stage_model = instantiate_from_config(config)
            if not self.cond_stage_trainable:
                freeze(self.cond_stage_model)

    # --- conditioning ----------------------------------------------------------------------------------------
    def get_learned_conditioning(self, c: Any) -> torch.Tensor:
        """Text (list of prompts) -> context [B, 77, D]; placeholder words go through the EmbeddingManager."""
        if self.cond_stage_forward is not None:
            return getattr(self.cond_stage_model, self.cond_stage_forward)(c)
        encode = getattr(self.cond_stage_model, "encode", None)
        if callable(encode):
            if self.embedding_manager is not None:
                c = encode(c, embedding_manager=self.embedding_manager)
            else:
                c = encode(c)
            if isinstance(c, DiagonalGaussianDistribution):
                c = c.mode()
            return c
        return self.cond_stage_model(c)

    def prompt_conditioning(self, prompts: Sequence[str], image_hw: tuple[int, int] | None = None, size: Any = None):
        """The prompts' conditioning for sampling images of ``image_hw`` (``[B, 77, D]`` here; SDXL adds its size
        conditioning ``size``, which other families ignore)."""
        return self.get_learned_conditioning(list(prompts))

    def unconditional_conditioning(
        self, n: int, image_hw: tuple[int, int] | None = None, size: Any = None, negative_prompts: Any = None
    ):
        """Classifier-free guidance's ``uc`` for ``n`` samples: the empty prompt (or ``negative_prompts``)."""
        return self.get_learned_conditioning(list(negative_prompts) if negative_prompts else n * [""])

    # --- first stage -----------------------------------------------------------------------------------------
    def encode_first_stage(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Posterior q(z | x) of the autoencoder for images x in [-1, 1] ([B, 3, H, W])."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(
        self, encoder_posterior: DiagonalGaussianDistribution | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A sample of the posterior times `scale_factor`: the latent the diffusion model sees."""
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample(generator=generator)
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise TypeError(f"encoder_posterior of type '{type(encoder_posterior)}' not supported")
        return self.scale_factor * z

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, 4, h, w] -> image [B, 3, H, W] in about [-1, 1]. Callers choose grad/no_grad."""
        return self.first_stage_model.decode(z / self.scale_factor)

    @torch.no_grad()
    def on_train_batch_start(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Rescale the latents to unit standard deviation once, from the first batch (LDM section 3).
        if (
            self.scale_by_std
            and self.current_epoch == 0
            and self.global_step == 0
            and batch_idx == 0
            and not self.restarted_from_ckpt
        ):
            x = super().get_input(batch, self.first_stage_key).to(self.device)
            z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
            del self.scale_factor
            self.register_buffer("scale_factor", 1.0 / z.flatten().std())
            logger.info("Set scale_factor to %.5f", float(self.scale_factor))

    # --- training --------------------------------------------------------------------------------------------
    def get_input(self, batch: dict, k: str, bs: int | None = None) -> tuple[torch.Tensor, Any]:
        """(z, c): the latent of the batch images and the conditioning (raw captions when it is trained)."""
        x = super().get_input(batch, k)
        if bs is not None:
            x = x[:bs]
        x = x.to(self.device)
        z = self.latent_from_batch(batch, x)
        if self.model.conditioning_key is None:
            return z, None
        c = batch[self.cond_stage_key]
        if bs is not None:
            c = c[:bs]
        if not self.cond_stage_trainable:
            with torch.no_grad():
                c = self.get_learned_conditioning(c)
        return z, c

    def get_first_stage_input(self, batch: dict) -> torch.Tensor:
        """The batch images as `[B, 3, H, W]` on the model's device."""
        return DDPM.get_input(self, batch, self.first_stage_key).to(self.device)

    def latent_from_batch(self, batch: dict, x: torch.Tensor) -> torch.Tensor:
        """z = scale_factor * (a sample of q(z | x)); the posterior comes from the cache when the batch allows it."""
        keys = batch_cache_keys(batch, x) if self.posterior_cache is not None else None
        if keys is not None:
            posterior = self.posterior_cache.posterior(keys, x, self.encode_first_stage)
        else:
            with torch.no_grad():
                posterior = self.encode_first_stage(x)
        return self.get_first_stage_encoding(posterior).detach()

    def shared_step(self, batch: dict, **kwargs: Any):
        # A frozen UNet stays in eval mode, where blocks never recompute; a training step still follows the config's
        # `use_checkpoint` (per-config choice: docs/benchmarks.md "Checkpointing"). Without gradients nothing
        # recomputes anyway.
        with forced_checkpointing(bool(getattr(self.model.diffusion_model, "use_checkpoint", False))):
            z, c = self.get_input(batch, self.first_stage_key)
            return self(z, c)

    def forward(self, x: torch.Tensor, c: Any, *args: Any, **kwargs: Any):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        if self.model.conditioning_key is not None and self.cond_stage_trainable:
            c = self.get_learned_conditioning(c)
        return self.p_losses(x, c, t, *args, **kwargs)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.embedding_manager is not None:
            self.embedding_manager.set_progress(self.global_step)  # progressive_words follows the optimiser step
        return super().training_step(batch, batch_idx)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any, **unet_kwargs: Any) -> torch.Tensor:
        """eps_theta(x_t, t, c): cond is a context tensor, a list of them, or the original's dict form
        (``c_crossattn``, ``c_concat``, ``c_adm``). ``unet_kwargs`` go to the UNet (``stop_after``: a guidance pass
        that stops after that block and returns its hidden state)."""
        if not isinstance(cond, dict):
            if not isinstance(cond, list):
                cond = [cond]
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond}
        return self.model(x_noisy, t, **cond, **unet_kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cond_stage_trainable and isinstance(self.cond_stage_model, nn.Module):
            params += [p for p in self.cond_stage_model.parameters() if p.requires_grad]
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """Inversion: AdamW on the placeholder vectors (+ the model at `model_lr` when unfrozen); else plain LDM."""
        if self.embedding_manager is None:
            return super().configure_optimizers()
        embedding_params = list(self.embedding_manager.embedding_parameters())
        if not self.unfreeze_model:
            return torch.optim.AdamW(embedding_params, lr=self.learning_rate)
        model_params = list(self.model.parameters())
        if isinstance(self.cond_stage_model, nn.Module):
            model_params += list(self.cond_stage_model.parameters())
        return torch.optim.AdamW(
            [{"params": embedding_params, "lr": self.learning_rate}, {"params": model_params, "lr": self.model_lr}]
        )

    # --- checkpoints and logging ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A frozen inversion run saves only `embedding_manager.*` (kilobytes, not the frozen gigabytes).

        Optimizer, loop and callback states stay, so `-r` resumes at the saved step; the embeddings files
        themselves are written by the EmbeddingWriter callback.
        """
        if self.embedding_manager is None or self.unfreeze_model:
            return
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k.startswith("embedding_manager.")}

    def log_images(self, batch: dict, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions, captions and DDIM samples without/with CFG (see `image_logging.log_images`)."""
        return log_images(self, batch, **kwargs)

    # --- sampling --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        cond: Any,
        batch_size: int = 16,
        return_intermediates: bool = False,
        x_T: torch.Tensor | None = None,
        verbose: bool = True,
        shape: tuple[int, ...] | None = None,
        **kwargs: Any,
    ):
        """DDPM ancestral sampling over all T steps (delegates to DDPMSampler)."""
        from ldm.models.diffusion.ddpm_sampler import DDPMSampler

        shape = shape or (self.channels, self.image_size, self.image_size)
        kwargs.setdefault("log_every_t", self.log_every_t)
        samples, intermediates = DDPMSampler(self).sample(
            self.num_timesteps, batch_size, shape, conditioning=cond, x_T=x_T, verbose=verbose, **kwargs
        )
        return (samples, intermediates) if return_intermediates else samples
