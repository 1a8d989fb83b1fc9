"""The ``--sampler NAME`` flag of every script that samples, and the original ``--plms`` / ``--ddpm`` as aliases.

The names are the registry's (``ldm.models.diffusion.samplers.SAMPLERS``); :func:`sampler_from_flags` resolves the
flags to one name and refuses conflicting ones with one clear error:
- ``--plms`` and ``--ddpm`` together, or either with another ``--sampler``;
- ``--ddim_eta`` other than 0 with a sampler that takes no eta (DDIM's eta; DDPM ignores it, as before).
"""

from __future__ import annotations

import argparse

from ldm.errors import UserError
from ldm.models.diffusion.samplers import SAMPLER_NAMES, sampler_spec

__all__ = ["add_sampler_args", "sampler_from_flags", "SAMPLER_HELP"]

SAMPLER_HELP = "sampler: " + ", ".join(SAMPLER_NAMES) + " (docs/samplers.md; the steps flag sets its step count)"
ALIASES = ("plms", "ddpm")


def add_sampler_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, aliases: bool = False) -> None:
    """``--sampler NAME`` (default: DDIM, or the alias given); with ``aliases`` also ``--plms`` and ``--ddpm``."""
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help=SAMPLER_HELP + "; default ddim")
    if aliases:
        parser.add_argument("--plms", action="store_true", help="use PLMS sampling (= --sampler plms)")
        parser.add_argument("--ddpm", action="store_true", help="use DDPM ancestral sampling (= --sampler ddpm)")


def sampler_from_flags(opt: argparse.Namespace, default: str = "ddim") -> str:
    """The sampler the flags select (``--sampler``, ``--plms``, ``--ddpm``), checked against ``--ddim_eta``."""
    given = [name for name in ALIASES if getattr(opt, name, False)]
    chosen = getattr(opt, "sampler", None)
    if len(given) > 1:
        raise UserError("--plms and --ddpm select different samplers; give one (or --sampler NAME)")
    if given and chosen is not None and chosen != given[0]:
        raise UserError(f"--{given[0]} and --sampler {chosen} select different samplers; drop one of them")
    name = chosen or (given[0] if given else default)
    spec = sampler_spec(name)
    eta = float(getattr(opt, "ddim_eta", 0.0) or 0.0)
    if eta != 0.0 and spec.eta == "refused":
        raise UserError(f"--ddim_eta {eta:g} applies to DDIM only; --sampler {name} takes no eta: drop --ddim_eta")
    return name
