"""Plain sampling as a registered method: no guidance (``--guidance plain``, the default without ``--ae_tokens``)."""

from __future__ import annotations

from ldm.guidance.base import GuidanceMethod, GuidanceRequest, NoSettings

__all__ = ["METHOD"]


def build(request: GuidanceRequest) -> None:
    return None


METHOD = GuidanceMethod(name="plain", title="Plain sampling", paper="", config_class=NoSettings, build=build)
