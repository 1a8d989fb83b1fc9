"""Small building blocks shared by the diffusion UNet (``openaimodel.py``) and the attention modules.

Names and behaviour follow CompVis latent-diffusion's ``ldm/modules/diffusionmodules/util.py`` so that configs and
checkpoints keep working; gradient checkpointing is the non-reentrant kind so that gradients reach every input
(including the latent in Attend-and-Excite guidance, see ``docs/architecture.md``, Seams).

When a block is recomputed (``checkpoint``): only while autograd records, and only when the block is configured to
checkpoint (``use_checkpoint``) *and* is in training mode, or inside :func:`forced_checkpointing` (the explicit
memory option of the Attend-and-Excite guidance pass, ``AttendExciteConfig.checkpoint_guidance``). Sampling runs the
model in eval mode, so it never recomputes, whatever the config says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

__all__ = [
    "GroupNorm32",
    "avg_pool_nd",
    "checkpoint",
    "compile_diffusion_model",
    "conv_nd",
    "forced_checkpointing",
    "linear",
    "normalization",
    "timestep_embedding",
    "zero_module",
]


_FORCED: ContextVar[bool] = ContextVar("ldm_forced_checkpointing", default=False)


@contextmanager
def forced_checkpointing(enabled: bool = True) -> Iterator[None]:
    """Inside this context every block that goes through :func:`checkpoint` recomputes its activations in the
    backward (when ``enabled``), whatever its ``use_checkpoint`` and training mode: less activation memory, one more
    forward of each block per backward."""
    token = _FORCED.set(enabled)
    try:
        yield
    finally:
        _FORCED.reset(token)


def checkpoint(
    func: Callable[..., Any],
    inputs: Sequence[Any],
    params: Iterable[nn.Parameter],
    flag: bool,
    training: bool = True,
) -> Any:
    """Evaluate ``func(*inputs)``, recomputing its activations in the backward pass when asked to.

    Recomputation happens only while autograd records (``torch.is_grad_enabled()``) and either ``flag and training``
    (the block's ``use_checkpoint`` and its ``nn.Module.training``: callers pass ``self.training``) or inside
    :func:`forced_checkpointing`. It uses the non-reentrant implementation, which propagates gradients to every
    tensor ``func`` touches, so ``params`` (kept for the original call signature) need not be listed.
    """
    del params  # non-reentrant checkpointing tracks parameters itself
    if torch.is_grad_enabled() and ((flag and training) or _FORCED.get()):
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def compile_diffusion_model(unet: nn.Module, **options: Any) -> nn.Module:
    """Compile ``unet``'s forward in place with ``torch.compile`` (``nn.Module.compile``: parameter names and the
    state dict are unchanged); ``options`` go to ``torch.compile``. Returns ``unet``. The first call of each new input
    shape compiles (tens of seconds on CPU); a captured attention layer or ``stop_after`` falls back to eager for that
    graph region (graph breaks), with the same results."""
    unet.compile(**options)
    return unet


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: int = 10000, repeat_only: bool = False
) -> torch.Tensor:
    """Sinusoidal timestep embedding ``[B] -> [B, dim]`` (Transformer positional encoding, Vaswani et al. 2017).

    ``emb = [cos(t * f_0..f_{h-1}), sin(t * f_0..f_{h-1})]`` with ``f_i = max_period^(-i/h)``, ``h = dim // 2``
    (cosines first, as in the original); an odd ``dim`` gets a trailing zero column.
    With ``repeat_only`` the raw timestep is repeated ``dim`` times.
    """
    if repeat_only:
        return timesteps[:, None].repeat(1, dim)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(timesteps.device)[None]  # [B, half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 (also with half-precision weights) and casts back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's standard normalisation layer: 32-group ``GroupNorm32`` (eps 1e-5)."""
    return GroupNorm32(32, channels)


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _pick(table: dict[int, type[nn.Module]], dims: int, what: str) -> type[nn.Module]:
    if dims not in table:
        raise ValueError(f"{what}: unsupported dims={dims}; use 1, 2 or 3")
    return table[dims]


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1D, 2D or 3D convolution (``nn.Conv{dims}d(*args, **kwargs)``)."""
    return _pick(_CONVS, dims, "conv_nd")(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1D, 2D or 3D average pooling layer."""
    return _pick(_AVG_POOLS, dims, "avg_pool_nd")(*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    """``nn.Linear`` (kept for the original call sites)."""
    return nn.Linear(*args, **kwargs)
