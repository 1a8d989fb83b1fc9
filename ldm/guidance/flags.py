"""Choosing a guidance method and its settings on the command line and in YAML.

- ``--guidance NAME``: a registered method (default: ``ae`` when ``--ae_tokens`` is given, else ``plain``).
- ``--guidance_config FILE``: a YAML file with a ``guidance:`` block, ``{target: <config class>, params: {...}}``
  (the project's ``target``/``params`` schema); its target also names the method when ``--guidance`` is not given.
- ``--g_<field>``: one flag per settings field of the registered methods, made from the config dataclasses' fields
  and types (no hand-kept table). A flag applies to the chosen method; naming a field the method does not have is an
  error. Attend-and-Excite keeps its ``--ae_config`` and ``--ae_<field>`` flags (``ldm/ae_flags.py``).

Settings are layered: the method's preset for the model family (or the dataclass defaults), then
``--guidance_config``, then the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ldm import guidance
from ldm.errors import MissingFileError, UserError
from ldm.guidance.base import GuidanceMethod
from ldm.util import get_obj_from_str, load_yaml

__all__ = [
    "parse_pairs", "parse_range", "parse_optional_int", "parse_bool", "field_parser", "add_guidance_args",
    "GuidanceChoice", "guidance_from_args", "load_guidance_yaml", "method_config", "settings_text",
]  # fmt: skip


# --- the value syntax of the flags -------------------------------------------------------------------------------
def parse_pairs(text: str) -> dict[int, float]:
    """``"0:0.05,10:0.5"`` -> ``{0: 0.05, 10: 0.5}`` (step: value)."""
    try:
        return {int(k): float(v) for k, v in (item.split(":") for item in text.split(",") if item.strip())}
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'step:threshold,...' like '0:0.05,10:0.5', got {text!r}") from err


def parse_range(text: str) -> tuple[float, float]:
    """``"1.0,0.5"`` -> ``(1.0, 0.5)``."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'start,end' like '1.0,0.5', got {text!r}") from err
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'start,end' like '1.0,0.5', got {text!r}")
    return parts[0], parts[1]


def parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from err


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from err


def field_parser(config_class: type, name: str) -> Callable[[str], Any]:
    """The flag parser of one config field, from its type annotation."""
    hint = typing.get_type_hints(config_class)[name]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float, str):
        return hint
    if hint is bool:
        return parse_bool
    if origin in (typing.Union, types.UnionType) and set(args) == {int, type(None)}:
        return parse_optional_int
    if origin in (Mapping, dict) or (origin is not None and issubclass(origin, Mapping)):
        return parse_pairs
    if origin is tuple and args == (float, float):
        return parse_range
    if origin is tuple and args == (float, ...):
        return _float_list
    if origin is tuple and args == (int, ...):
        return _int_list
    raise TypeError(f"{config_class.__name__}.{name}: no flag syntax for type {hint!r}")


# --- the parser --------------------------------------------------------------------------------------------------
def _settings_fields() -> dict[str, tuple[Callable[[str], Any], list[str]]]:
    """field name -> (parser, the methods having it); a field's type must be the same in every method."""
    fields: dict[str, tuple[Callable[[str], Any], list[str]]] = {}
    for name in guidance.method_names():
        method = guidance.get_method(name)
        for field_name in method.field_names():
            parser = field_parser(method.config_class, field_name)
            if field_name in fields and fields[field_name][0] is not parser:
                raise TypeError(f"guidance setting {field_name!r} has different types in {fields[field_name][1]} and "
                                f"{name!r}; give it one type or another name")  # fmt: skip
            fields.setdefault(field_name, (parser, []))[1].append(name)
    return fields


def add_guidance_args(parser: argparse.ArgumentParser) -> None:
    """``--guidance``, ``--guidance_config`` and a ``--g_<field>`` flag per settings field of the registered methods."""
    g = parser.add_argument_group("Guidance methods (--g_<field> flags override the method's settings)")
    names = guidance.method_names()
    g.add_argument("--guidance", type=str, default=None, choices=names,
                   help="guidance method (default: ae with --ae_tokens, else plain)")  # fmt: skip
    config_help = "YAML with a guidance: block (target: the method's config class, params: its settings)"
    g.add_argument("--guidance_config", type=str, default=None, help=config_help)
    for name, (kind, methods) in _settings_fields().items():
        # SUPPRESS: a flag that was not given leaves no attribute (so a None value is still an override)
        g.add_argument(f"--g_{name}", type=kind, default=argparse.SUPPRESS, help=f"setting of {', '.join(methods)}")


@dataclass(frozen=True)
class GuidanceChoice:
    """The method a run uses and its settings (schedule as written; ``method.for_steps`` makes it absolute)."""

    method: GuidanceMethod
    config: Any

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def active(self) -> bool:
        return self.method.name != "plain"


def load_guidance_yaml(path: str | Path, flag: str = "--guidance_config") -> tuple[GuidanceMethod, Any]:
    """The method and settings of a YAML ``guidance: {target: <config class>, params: {...}}`` block."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{flag} {path}: no such file (see configs/guidance/)")
    raw = load_yaml(path, flag)
    block = raw.get("guidance") if "guidance" in raw else None
    if block is None or "target" not in block:
        raise UserError(f"{flag} {path}: expected a 'guidance:' block with 'target' (a method's config class) and "
                        "'params'")  # fmt: skip
    target = str(block.target)
    method = next((guidance.get_method(n) for n in guidance.method_names()
                   if _dotted(guidance.get_method(n).config_class) == target), None)  # fmt: skip
    if method is None:
        try:
            get_obj_from_str(target)
        except (ImportError, AttributeError) as err:
            raise UserError(f"{flag} {path}: target {target} cannot be imported ({err})") from err
        known = ", ".join(_dotted(guidance.get_method(n).config_class) for n in guidance.method_names())
        raise UserError(f"{flag} {path}: target {target} is no registered method's config class; use one of {known}")
    params = block.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
    return method, method_config(method, params, f"{flag} {path}")


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def method_config(method: GuidanceMethod, values: Mapping[str, Any], source: str, base: Any = None) -> Any:
    """``base`` (default: the dataclass defaults) with ``values`` on top; an unknown field is a ``UserError``."""
    allowed = [f.name for f in dataclasses.fields(method.config_class)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f"{source}: {', '.join(unknown)} is not a setting of guidance method {method.name!r}; "
                        f"its settings: {', '.join(method.field_names()) or 'none'}")  # fmt: skip
    try:
        if base is None:
            return method.config_class(**values)
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: {err}") from err


def _preset(method: GuidanceMethod, family: str | None) -> Any:
    path = method.preset_for(family)
    if path is None:
        return method.config_class()
    return load_guidance_yaml(path, "preset")[1]


def guidance_from_args(args: argparse.Namespace, family: str | None = None) -> GuidanceChoice:
    """The method and settings a script's parsed flags ask for (see the module docstring).

    ``family``: the model family whose preset applies (``ldm.models.description``); A&E's settings come from
    ``ldm.ae_flags.attend_excite_config`` (``--ae_config``, the family preset, ``--ae_<field>``).
    """
    name = getattr(args, "guidance", None)
    config_path = getattr(args, "guidance_config", None)
    from_file = load_guidance_yaml(config_path) if config_path else None
    if name is None:
        if from_file is not None:
            name = from_file[0].name
        else:
            name = "ae" if str(getattr(args, "ae_tokens", "") or "").strip() else "plain"
    method = guidance.get_method(name)
    if from_file is not None and from_file[0].name != method.name:
        raise UserError(f"--guidance_config {config_path} holds settings of {from_file[0].name!r}, but --guidance is "
                        f"{method.name!r}; drop one of them")  # fmt: skip
    if method.name == "ae":
        from ldm.ae_flags import attend_excite_config

        if from_file is not None and getattr(args, "ae_config", None):
            raise UserError("--guidance_config and --ae_config both give A&E settings; use one of them")
        config = from_file[1] if from_file is not None else attend_excite_config(args)
        if from_file is not None:
            config = attend_excite_config(args, base=config)
    else:
        config = from_file[1] if from_file is not None else _preset(method, family)
    given = {k[2:]: v for k, v in vars(args).items() if k.startswith("g_") and k[2:] in _settings_fields()}
    if given:
        config = method_config(method, given, "--g_" + "/--g_".join(given), base=config)
    if method.needs_tokens and not str(getattr(args, "ae_tokens", "") or "").strip():
        raise UserError(
            f"--guidance {method.name} needs --ae_tokens: the words it excites (e.g. --ae_tokens 'cat,dog')"
        )
    return GuidanceChoice(method, config)


def settings_text(value: Any) -> str:
    """A settings value in its flag syntax (the explorer's fields, the equivalent command)."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
