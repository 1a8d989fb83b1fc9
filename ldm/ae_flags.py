"""Attend-and-Excite on the command line: ``--ae_tokens``, ``--ae_config`` and one ``--ae_<field>`` flag per
``AttendExciteConfig`` field, shared by the txt2img scripts and ``scripts/evaluate_attend_excite.py``
(re-exported by :mod:`ldm.inference`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ldm.errors import MissingFileError
from ldm.guidance.attend_excite.config import AttendExciteConfig
from ldm.guidance.flags import field_parser
from ldm.util import load_yaml

DEFAULT_AE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "guidance" / "attend_and_excite.yaml"
SD2_AE_CONFIG = DEFAULT_AE_CONFIG.with_name("attend_and_excite_sd2.yaml")  # softmax_end: eot (official sd_2_1)
SDXL_AE_CONFIG = DEFAULT_AE_CONFIG.with_name("attend_and_excite_sdxl.yaml")  # the 32x32 maps at 1024 px
FAMILY_PRESETS = {"sd2": SD2_AE_CONFIG, "sdxl": SDXL_AE_CONFIG}  # model family -> its A&E preset (else the official)
TOKENS_HELP = "tokens to excite: words and/or 1-based positions ('*,dog', '2,5'); empty = plain sampling"
AE_FIELDS = [f.name for f in dataclasses.fields(AttendExciteConfig) if f.name != "token_indices"]


def add_attend_excite_args(
    parser: argparse.ArgumentParser, tokens_help: str | None = None, save_attention: bool = True
) -> None:
    """``--ae_tokens``, ``--ae_config``, ``--save_attention`` (unless ``save_attention`` is False) and one
    ``--ae_<field>`` flag per ``AttendExciteConfig`` field."""
    g = parser.add_argument_group("Attend-and-Excite (flags override --ae_config)")
    tokens_help = tokens_help or TOKENS_HELP
    g.add_argument("--ae_tokens", type=str, default="", help=tokens_help)
    config_help = (
        "YAML with the A&E fields (default: the model family's preset, configs/guidance/attend_and_excite.yaml, or "
        "attend_and_excite_sd2.yaml for SD 2 models; seed_fork.yaml: the earlier fork's preset)"
    )
    g.add_argument("--ae_config", type=str, default=None, help=config_help)
    if save_attention:
        g.add_argument("--save_attention", action="store_true", help="save each excited token's map over the image")
    for name in AE_FIELDS:
        # SUPPRESS: a flag that was not given leaves no attribute, so "--ae_schedule_steps none" (a None value) is
        # still an override
        kind = field_parser(AttendExciteConfig, name)  # from the field's type, as the --g_<field> flags
        g.add_argument(f"--ae_{name}", type=kind, default=argparse.SUPPRESS, help=f"AttendExciteConfig.{name}")


def load_ae_config(path: str | Path, **overrides: Any) -> AttendExciteConfig:
    """An ``AttendExciteConfig`` from a YAML file (fields under ``attend_and_excite:`` or at the top level), with
    ``overrides`` (field -> value, None = keep the file's value) on top. ``token_indices`` in the file is ignored."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--ae_config {path}: no such file (see configs/guidance/)")
    raw = OmegaConf.to_container(load_yaml(path, "--ae_config"), resolve=True)
    values = dict(raw.get("attend_and_excite", raw))
    if "guidance" in raw:  # the guidance: {target, params} form of ldm.guidance.flags
        values = dict(raw["guidance"].get("params") or {})
    unknown = (set(values) | set(overrides)) - {f.name for f in dataclasses.fields(AttendExciteConfig)}
    if unknown:
        raise ValueError(f"--ae_config {path}: unknown fields {sorted(unknown)}; allowed: {AE_FIELDS}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.pop("token_indices", None)
    return AttendExciteConfig(**values)


def model_family(model_config: str | Path | None) -> str | None:
    """The family of a model config (``ldm.models.description``: "ldm", "sd1", "sd2", "sdxl"), for the guidance
    methods' presets; None without a config file."""
    if model_config is None or not Path(model_config).is_file():
        return None
    from ldm.models.description import describe_config

    return describe_config(model_config).family


def preset_for_model(model_config: str | Path | None) -> Path:
    """The A&E preset of a model config's family (``ldm.models.description``): SD 2's, SDXL's, else the official."""
    return FAMILY_PRESETS.get(model_family(model_config), DEFAULT_AE_CONFIG)


def attend_excite_config(
    args: argparse.Namespace, model_config: str | Path | None = None, base: AttendExciteConfig | None = None
) -> AttendExciteConfig:
    """The YAML of ``--ae_config`` (default: the preset for the family of ``model_config``, else of ``args.config``;
    or ``base`` when given) with the ``--ae_<field>`` flags that were given on top."""
    given = {name: getattr(args, f"ae_{name}") for name in AE_FIELDS if hasattr(args, f"ae_{name}")}
    if base is None:
        model_config = model_config or getattr(args, "config", None)
        base = load_ae_config(getattr(args, "ae_config", None) or preset_for_model(model_config))
    return dataclasses.replace(base, **given)
