"""Build a model whose weights a checkpoint overwrites without paying for their random initialisation.

SD v1 has about 1.07e9 parameters; drawing them from ``torch.nn.init``'s random initialisers costs seconds of start-up
that the checkpoint load then throws away. Inside :func:`skip_random_init` the random initialisers of
``torch.nn.init`` only fill NaN (a memset); deterministic ones (``zeros_``, ``ones_``, ``constant_``, and
``zero_module``'s in-place zeroing) run as usual. After the load, :func:`reinit_unloaded` gives every parameter the
checkpoint did not provide its module's ordinary initialisation (``reset_parameters``), so nothing stays NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)

_RANDOM_INITS = (
    "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
    "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip


def _nan_fill(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return tensor.fill_(float("nan"))


@contextmanager
def skip_random_init(enabled: bool = True) -> Iterator[None]:
    """While active (and ``enabled``), ``torch.nn.init``'s random initialisers fill NaN instead of drawing numbers."""
    if not enabled:
        yield
        return
    saved = {name: getattr(nn.init, name) for name in _RANDOM_INITS if hasattr(nn.init, name)}
    try:
        for name in saved:
            setattr(nn.init, name, _nan_fill)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def reinit_unloaded(model: nn.Module, loaded: Iterable[str]) -> list[str]:
    """Re-initialise (``reset_parameters``) every module with a parameter not in ``loaded`` that holds NaN.

    Returns the names of the parameters that were re-initialised. A NaN parameter whose module has no
    ``reset_parameters`` is an error naming it (it would poison every output).
    """
    loaded = set(loaded)
    redone: list[str] = []
    for module_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False)]
        stale = [n for n, p in own if f"{module_name}.{n}".lstrip(".") not in loaded and bool(torch.isnan(p).any())]
        if not stale:
            continue
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset):
            names = [f"{module_name}.{n}" for n in stale]
            raise RuntimeError(f"parameters {names} were neither loaded from the checkpoint nor initialised")
        reset()
        redone += [f"{module_name}.{n}" for n in stale]
    if redone:
        logger.info("initialised %d parameters the checkpoint did not hold, e.g. %s", len(redone), redone[:3])
    return redone
