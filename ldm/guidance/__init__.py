"""Guidance methods as plug-ins: Attend-and-Excite and its successors behind one seam.

- :mod:`ldm.guidance.base`: the sampler hook (``LatentGuidance``) and what a method is (``GuidanceMethod``).
- :mod:`ldm.guidance.registry`: the registered methods, one line each.
- :mod:`ldm.guidance.engine`: the loop the attention-loss methods share; :mod:`~ldm.guidance.capture`: which maps a
  pass captures; :mod:`~ldm.guidance.denoiser`: the pass through the model's own denoising call.
- :mod:`ldm.guidance.flags`: ``--guidance``, ``--guidance_config`` and the ``--g_<field>`` flags made from the
  methods' config fields.

``get_method(name)`` and ``method_names()`` read the registry; ``register(method)`` adds one at run time (tests and
plug-ins outside the package).
"""

from __future__ import annotations

from ldm.errors import UserError
from ldm.guidance.base import GuidanceMethod, GuidanceRequest, LatentGuidance

__all__ = ["GuidanceMethod", "GuidanceRequest", "LatentGuidance", "get_method", "method_names", "register",
           "unregister"]  # fmt: skip

_METHODS: dict[str, GuidanceMethod] = {}


def _registry() -> dict[str, GuidanceMethod]:
    """The registry, with the built-in methods loaded on first use (``ldm/guidance/registry.py``)."""
    if not _METHODS:
        from ldm.guidance.registry import BUILTIN

        for method in BUILTIN:
            _METHODS.setdefault(method.name, method)
    return _METHODS


def register(method: GuidanceMethod) -> None:
    """Add ``method`` to the registry (its name must be new)."""
    methods = _registry()
    if method.name in methods:
        raise ValueError(f"guidance method {method.name!r} is registered already")
    methods[method.name] = method


def unregister(name: str) -> None:
    """Remove a method registered at run time (tests)."""
    _METHODS.pop(name, None)


def method_names() -> list[str]:
    return list(_registry())


def get_method(name: str | GuidanceMethod) -> GuidanceMethod:
    """The registered method ``name`` (a ``GuidanceMethod`` is returned as it is)."""
    if isinstance(name, GuidanceMethod):
        return name
    methods = _registry()
    if name not in methods:
        raise UserError(f"--guidance {name}: unknown guidance method; use one of {', '.join(methods)}")
    return methods[name]
