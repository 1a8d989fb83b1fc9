"""Stable Diffusion XL (Podell et al. 2023) as a ``LatentDiffusion`` in sgm's checkpoint layout.

The keys of ``sd_xl_base_1.0.safetensors`` load strictly: ``conditioner.embedders.{0,1}.*`` (the text towers, see
``ldm/modules/encoders/sdxl.py``), ``model.diffusion_model.*`` (the UNet: ``num_classes: sequential``,
``adm_in_channels: 2816``, transformer depths ``[0, 2, 10]``, linear projections) and ``first_stage_model.*``.
Diffusion is the legacy DDPM schedule of SD (linear in sqrt(beta), 0.00085..0.012, 1000 steps) with eps-prediction,
``scale_factor`` 0.13025; this project's DDIM, PLMS and DDPM samplers run on it unchanged.

The conditioner is this model's ``cond_stage_model`` (the name every sampler and tool uses), stored under sgm's
``conditioner`` prefix. Conditioning is ``{"c_crossattn": [context], "c_adm": [y]}`` (``conditioning_key:
crossattn-adm``). Classifier-free guidance's unconditional input has zeros for the text parts when there is no
negative prompt (sgm's and diffusers' choice for SDXL) and the same size conditioning as the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ldm.models.diffusion.gaussian_diffusion import SCHEDULE_BUFFERS
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.modules.encoders.sdxl import SizeConditioning

__all__ = ["SDXLDiffusion", "SizeConditioning"]


class SDXLDiffusion(LatentDiffusion):
    """``LatentDiffusion`` with sgm's ``conditioner`` in place of ``cond_stage_model`` (same object, one name each
    for the checkpoint and for the code). ``conditioning_key`` is ``crossattn-adm``."""

    def __init__(self, *args: Any, conditioning_key: str = "crossattn-adm", **kwargs: Any) -> None:
        if conditioning_key != "crossattn-adm":
            raise ValueError(f"SDXLDiffusion: conditioning_key must be 'crossattn-adm', got {conditioning_key!r}")
        kwargs.setdefault("cond_stage_key", "caption")
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)

    def register_schedule(self, *args: Any, **kwargs: Any) -> None:
        """The schedule buffers are not saved (sgm's checkpoints hold none; the schedule comes from the config)."""
        super().register_schedule(*args, **kwargs)
        for name in SCHEDULE_BUFFERS:
            value = self._buffers.pop(name)
            self.register_buffer(name, value, persistent=False)

    @property
    def cond_stage_model(self) -> Any:
        return self._modules.get("conditioner")

    @cond_stage_model.setter
    def cond_stage_model(self, value: Any) -> None:
        if value is None:
            self._modules.pop("conditioner", None)
        else:
            self.conditioner = value

    def instantiate_cond_stage(self, config: Any) -> None:
        from ldm.models.diffusion.gaussian_diffusion import freeze
        from ldm.util import instantiate_from_config

        self.conditioner = instantiate_from_config(config)
        if not self.cond_stage_trainable:
            freeze(self.conditioner)

    @property
    def native_image_hw(self) -> tuple[int, int]:
        side = int(self.image_size) * 2 ** int(self.num_downs)
        return side, side

    # --- conditioning --------------------------------------------------------------------------------------------
    def get_learned_conditioning(self, c: Any) -> dict[str, list[torch.Tensor]]:
        """Prompts -> ``{"c_crossattn": [[B, 77, 2048]], "c_adm": [[B, 2816]]}`` at the native size, not cropped."""
        return self.prompt_conditioning(list(c) if not isinstance(c, str) else [c])

    def prompt_conditioning(
        self, prompts: Sequence[str], image_hw: tuple[int, int] | None = None, size: SizeConditioning | None = None
    ) -> dict[str, list[torch.Tensor]]:
        """The prompts' conditioning for images of ``image_hw`` (default: native) with ``size`` micro-conditioning."""
        manager, image_hw = self.embedding_manager, image_hw or self.native_image_hw
        return self.conditioner.encode(list(prompts), embedding_manager=manager, size=size, image_hw=image_hw)

    def unconditional_conditioning(
        self,
        n: int,
        image_hw: tuple[int, int] | None = None,
        size: SizeConditioning | None = None,
        negative_prompts: Sequence[str] | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        """CFG's ``uc``: the negative prompts, or zeros for the text parts without any; the same sizes as ``c``."""
        texts = list(negative_prompts) if negative_prompts else n * [""]
        return self.conditioner.encode(
            texts, embedding_manager=self.embedding_manager, size=size, image_hw=image_hw or self.native_image_hw,
            zero_text=not negative_prompts,
        )  # fmt: skip
