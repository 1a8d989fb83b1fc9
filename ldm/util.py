"""Config instantiation and safe checkpoint loading.

Everything here is shared by training (`main.py`), the sampling scripts and the tests.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.errors import MissingFileError, UserError

logger = logging.getLogger(__name__)

# Keys that released checkpoints carry and that are not parameters of the model (see environment.md):
# a transformers<4.31 persistent buffer and the EMA bookkeeping scalars.
DROPPED_CHECKPOINT_KEYS = (
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",  # the same in SDXL's layout
    "denoiser.sigmas",  # sgm's noise levels, a buffer computed from the schedule (SDXL)
    "model_ema.decay",
    "model_ema.num_updates",
)
# Keys the model has and released checkpoints never carry (textual-inversion parameters).
MODEL_ONLY_PREFIXES = ("embedding_manager.",)
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_LISTED_KEYS = 20
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(UserError):
    """A config file cannot be read (syntax, not text), or names a target that cannot be imported or built."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


def repo_path(path: str | os.PathLike) -> Path:
    """``path``, or for a relative path that does not exist from the working directory, the same path under the
    repository root when it exists there: the shipped configs name files relative to the repository
    (``configs/toyworld/vocab.txt``, ``models/toyworld/autoencoder.safetensors``), so they work from any folder."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    in_repo = REPO_ROOT / p
    return in_repo if in_repo.exists() else p


def load_yaml(path: str | os.PathLike, flag: str = "--config") -> DictConfig:
    """A YAML config as a ``DictConfig``; every failure is a :class:`ConfigError` naming ``flag`` and the file.

    A missing file, a file that is not text, a YAML syntax error (with its line and column) and a file whose top
    level is not a mapping are all named. Relative paths fall back to the repository (:func:`repo_path`).
    """
    import yaml

    p = repo_path(path)
    if not p.is_file():
        raise MissingFileError(f"{flag} {path}: no such file")
    raw = p.read_bytes()
    if b"\0" in raw[:8192]:
        raise ConfigError(f"{flag} {p}: not a text file (it holds binary data); pass a YAML config")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{flag} {p}: not a UTF-8 text file (byte {err.start}); pass a YAML config") from err
    try:
        config = OmegaConf.load(p)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{flag} {p}{where}: YAML syntax error: {problem}") from err
    except Exception as err:  # OmegaConf refuses a top-level scalar, unsupported value types, ...
        raise ConfigError(f"{flag} {p}: not a config OmegaConf can read: {err}") from err
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{flag} {p}: expected a YAML mapping (key: value) at the top level, got a list")
    return config


def exists(value: Any) -> bool:
    return value is not None


def default(value: Any, fallback: Any) -> Any:
    if value is not None:
        return value
    return fallback() if callable(fallback) else fallback


def count_params(model: torch.nn.Module, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        logger.info("%s has %.2f M params.", model.__class__.__name__, total * 1.0e-6)
    return total


def get_obj_from_str(path: str, reload: bool = False) -> Any:
    """Import `package.module.Name` and return `Name`."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"'{path}' is not a dotted path of the form package.module.Name")
    module = importlib.import_module(module_name)
    if reload:
        module = importlib.reload(module)
    return getattr(module, attr)


def instantiate_from_config(config: Mapping | DictConfig, **extra_kwargs: Any) -> Any:
    """Build `config.target(**config.params, **extra_kwargs)`.

    The error for a bad target names the target and where in the config it sits.
    """
    if not isinstance(config, Mapping | DictConfig) or "target" not in config:
        if config in ("__is_first_stage__", "__is_unconditional__"):
            return None
        where = _config_location(config)
        raise ConfigError(f"Expected a config with a 'target' key{where}, got: {config!r}")
    target = config["target"]
    try:
        cls = get_obj_from_str(target)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"Cannot import target '{target}'{_config_location(config)}: {err}. "
            "Check the spelling of the dotted path in the YAML 'target' key."
        ) from err
    params = config.get("params", None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    try:
        return cls(**params, **extra_kwargs)
    except TypeError as err:
        raise ConfigError(f"Cannot build '{target}'{_config_location(config)} from its params: {err}") from err


def _config_location(config: Any) -> str:
    if isinstance(config, DictConfig):
        key = config._get_full_key(None)
        if key:
            return f" (at config key '{key}')"
    return ""


# What torch's weights_only refusal says about the refused object, across versions: "Unsupported global: GLOBAL x.y"
# (2.4-2.5), "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" (2.6-2.13),
# "Unsupported operand 123".
_REFUSED = re.compile(
    r"unsupported (?:global: )?GLOBAL [\w.]+(?: whose module [\w.]+ is blocked)?|unsupported operand[^\n.]*",
    re.IGNORECASE,
)


def describe_unpickling_error(err: BaseException) -> str:
    """The informative part of torch's weights_only refusal (which class was refused), without terminal codes.

    Never torch's advice to retry with ``weights_only=False`` (that would run the file's code).
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    match = _REFUSED.search(text)
    if match:
        return match.group(0)
    lines = [line for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else "objects other than tensors"


def describe_read_error(err: BaseException) -> str:
    """The first sentence of torch's (long) message for a truncated or corrupt file."""
    text = str(err).strip() or type(err).__name__
    return text.split(". ")[0].rstrip(".")


# Pickle opcodes that look up or call a global: what torch's weights_only unpickler refuses in an unsafe file.
_GLOBAL_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}
_MAX_PICKLES = 8  # a legacy torch file holds a few pickles (magic number, version, system info, the object) in a row


def holds_pickled_objects(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a well-formed pickle that builds objects: the ``data.pkl`` of a torch zip archive, or the
    pickles at the start of a legacy torch file, parse completely (``pickletools``; nothing is executed) and look up
    globals. A refusal of such a file means unsafe content; of anything else (random bytes, a damaged archive) that
    the file is corrupt."""
    import io
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                stream: Any = io.BytesIO(archive.read(name))
        else:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return False
    found = False
    with stream:
        for _ in range(_MAX_PICKLES):
            try:
                ops = [op.name for op, _, _ in pickletools.genops(stream)]  # up to and including STOP
            except Exception:  # noqa: BLE001 - an unknown opcode, a truncated stream: not (or no more) pickle
                return found
            found |= bool(_GLOBAL_OPS.intersection(ops))
            if found:
                return True
    return found


def safe_torch_load(
    path: Path, refused: str, refused_hint: str, corrupt: str, corrupt_hint: str, error: type[Exception], **kwargs: Any
) -> Any:
    """``torch.load(path, weights_only=True)``; a refused pickle or a truncated/corrupt file becomes one ``error``.

    A file the unpickler rejects is "refused" (unsafe) only when it is a well-formed pickle that builds objects
    (:func:`holds_pickled_objects`); random bytes and damaged archives are "corrupt".

    ``refused`` / ``corrupt`` open the two messages ("Refused to load 'x.ckpt'", "Checkpoint 'x.ckpt'"); the hints say
    how to fix each case. ``kwargs`` go to ``torch.load`` (e.g. ``mmap=True``).
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, **kwargs)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        if kwargs.get("mmap") and "mmap" in str(err):  # a legacy (non-zip) file cannot be mapped: read it
            return safe_torch_load(path, refused, refused_hint, corrupt, corrupt_hint, error)
        raise error(f"{corrupt} is truncated or corrupt ({describe_read_error(err)}). {corrupt_hint}") from err
    except Exception as err:  # noqa: BLE001 - the unpickler's refusal, or whatever random bytes make it raise
        if not holds_pickled_objects(path):  # random bytes, a damaged archive: corrupt, not malicious
            raise error(
                f"{corrupt} is corrupt: it is not a torch file (no readable pickle in it). {corrupt_hint}"
            ) from err
        raise error(
            f"{refused}: it contains objects other than tensors, which could run code when unpickled "
            f"({describe_unpickling_error(err)}). {refused_hint}"
        ) from err


def check_checkpoint_file(path: str | os.PathLike, flag: str = "--resume") -> None:
    """Check that a Lightning/torch checkpoint opens with ``weights_only=True`` before anything is built from it.

    The tensors are memory-mapped, not read. A truncated file and a file that pickles code are each refused with a
    :class:`CheckpointError` naming ``flag`` and the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{flag} checkpoint '{p}' does not exist.")
    safe_torch_load(
        p, f"{flag}: refused to load '{p}'", "Resume only from checkpoints this project wrote.",
        f"{flag}: checkpoint '{p}'", "Resume from another checkpoint of the run (checkpoints/*.ckpt) or start the run "
        "again.", CheckpointError, mmap=True,
    )  # fmt: skip


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor file safely: `.ckpt/.pt/.pth/.bin` with `weights_only=True`, or `.safetensors`.

    The state dict may sit at `state_dict` or at top level. Nothing is ever unpickled beyond tensors and
    plain containers.
    """
    path = repo_path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist. Pass the path of a .ckpt or .safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"Checkpoint '{path}' is not a readable safetensors file ({err}).") from err
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"Checkpoint '{path}' has an unknown extension; use .safetensors or one of {', '.join(TORCH_SUFFIXES)}."
        )
    obj = safe_torch_load(
        path, f"Refused to load '{path}'", "Convert it to .safetensors from a trusted environment.",
        f"Checkpoint '{path}'", "Download it again.", CheckpointError,
    )  # fmt: skip
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(obj).__name__}, not a state dict.")
    return dict(obj)


def filter_checkpoint_keys(
    state_dict: Mapping[str, torch.Tensor], model_keys: set[str], use_ema: bool
) -> dict[str, torch.Tensor]:
    """Drop, by name, the keys released files carry that the model does not have."""
    kept = {}
    for key, value in state_dict.items():
        if key in DROPPED_CHECKPOINT_KEYS and key not in model_keys:
            continue
        if key.startswith("model_ema.") and not use_ema:
            continue
        kept[key] = value
    return kept


def _listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED_KEYS])
    more = f"\n    ... and {len(items) - MAX_LISTED_KEYS} more" if len(items) > MAX_LISTED_KEYS else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def load_state_dict_into(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> tuple[list[str], list[str]]:
    """Load `state_dict` into `model`, reporting missing, unexpected and mis-shaped keys in one error.

    Returns (missing, unexpected) when `strict` is False.
    """
    own = model.state_dict()
    use_ema = bool(getattr(model, "use_ema", False))
    state_dict = filter_checkpoint_keys(state_dict, set(own), use_ema)
    missing = [k for k in own if k not in state_dict and not k.startswith(MODEL_ONLY_PREFIXES)]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or mismatched):
        parts = [f"{source} does not fit the model built from the config:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                parts.append(_listing(title, items))
        parts.append("Check that the config matches the checkpoint (model family, context_dim, channels).")
        raise CheckpointError("\n".join(parts))
    if mismatched:
        raise CheckpointError(
            "\n".join([f"{source} has tensors of the wrong shape:", _listing("shape mismatches", mismatched)])
        )
    loadable = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(loadable, strict=False)
    if missing:
        logger.warning("%d keys missing from %s, e.g. %s", len(missing), source, missing[:5])
    if unexpected:
        logger.warning("%d unexpected keys in %s, e.g. %s", len(unexpected), source, unexpected[:5])
    return missing, unexpected


def load_model_from_config(
    config: Mapping | DictConfig, ckpt: str | os.PathLike | None, strict: bool = True
) -> torch.nn.Module:
    """Instantiate `config.model` (or `config` itself when it has a target) and load `ckpt` into it."""
    from ldm.models.description import describe_config

    model_config = config["model"] if "model" in config else config
    model = instantiate_from_config(model_config)
    try:
        model.description = describe_config(config)  # family, towers, toy (``ldm.models.description``)
    except Exception as err:  # a config the description does not know (a first stage alone): no description
        logger.debug("no model description for this config: %s", err)
    if ckpt:
        logger.info("Loading model weights from %s", ckpt)
        state_dict = load_state_dict_file(ckpt)
        load_state_dict_into(model, state_dict, strict=strict, source=f"Checkpoint '{ckpt}'")
    return model
