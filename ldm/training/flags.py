"""The flags of ``main.py``: the parser (the original flags plus Lightning 2's trainer flags), the OmegaConf dot-list
overrides among the extra arguments, and the trainer options merged from ``lightning.trainer`` and the flags."""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

DESCRIPTION = "Training CLI (Lightning 2) for latent diffusion models, autoencoders and textual inversion."
TRAINER_FLAGS = (
    "accelerator",
    "devices",
    "strategy",
    "precision",
    "max_steps",
    "max_epochs",
    "num_nodes",
    "accumulate_grad_batches",
    "limit_val_batches",
    "num_sanity_val_steps",
    "log_every_n_steps",
)


def str2bool(value: str | bool) -> bool:
    """``yes/true/t/y/1`` -> True, ``no/false/f/n/0`` -> False (any case); else an argparse error."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Boolean value expected, got '{value}'")


def get_parser() -> argparse.ArgumentParser:
    """The original flags (reference spec 1.2) plus the Lightning 2 trainer flags."""
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("-n", "--name", type=str, const=True, default="", nargs="?", help="run-folder suffix")
    p.add_argument("-r", "--resume", type=str, const=True, default="", nargs="?", help="run folder or checkpoint")
    p.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=[], help="configs, merged in order")
    p.add_argument("-t", "--train", type=str2bool, const=True, default=False, nargs="?", help="train")
    p.add_argument("--no-test", type=str2bool, const=True, default=False, nargs="?", help="skip trainer.test")
    p.add_argument("-p", "--project", help="unused (kept for old command lines)")
    p.add_argument("-d", "--debug", type=str2bool, nargs="?", const=True, default=False, help="debug mode (unused)")
    p.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    p.add_argument("-f", "--postfix", type=str, default="", help="post-postfix for the run name")
    p.add_argument("-l", "--logdir", type=str, default="logs", help="root folder of the runs")
    p.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                   help="lr = accumulate_grad_batches * devices * num_nodes * batch_size * base_lr")  # fmt: skip
    p.add_argument("--datadir_in_name", type=str2bool, nargs="?", const=True, default=True,
                   help="prefix the run name with the basename of --data_root")  # fmt: skip
    p.add_argument("--actual_resume", type=str, default="", help="pretrained model checkpoint to invert against")
    p.add_argument("--data_root", type=str, default="", help="folder of training images")
    p.add_argument("--embedding_manager_ckpt", type=str, default="", help="initialise from a saved embeddings file")
    p.add_argument("--placeholder_string", type=str, default="", help="the placeholder word (model and captions)")
    p.add_argument("--init_word", type=str, default="", help="word whose embedding initialises the placeholder")
    p.add_argument("--logger", choices=("auto", "tensorboard", "csv"), default="auto",
                   help="auto: TensorBoard when installed, else CSV")  # fmt: skip
    # Lightning 2 trainer flags (None: keep the config's lightning.trainer value).
    p.add_argument("--gpus", type=str, default=None, help="old form: '0,' or '0,1' (maps to --accelerator/--devices)")
    p.add_argument("--accelerator", type=str, default=None, help="cpu | gpu | cuda | mps | auto")
    p.add_argument("--devices", type=str, default=None, help="number of devices, a list '0,1', or 'auto'")
    p.add_argument("--strategy", type=str, default=None, help="auto | ddp | ddp_find_unused_parameters_true | ...")
    p.add_argument("--precision", type=str, default=None, help="32-true | bf16-mixed | 16-mixed | ...")
    p.add_argument("--num_nodes", type=int, default=None)
    p.add_argument("--accumulate_grad_batches", type=int, default=None)
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--max_epochs", type=int, default=None)
    p.add_argument("--limit_val_batches", type=float, default=None)
    p.add_argument("--num_sanity_val_steps", type=int, default=None)
    p.add_argument("--log_every_n_steps", type=int, default=None)
    return p


def parse_devices(value: Any) -> int | str | list[int]:
    """'2' -> 2, '0,' / '0,1' / [0, 1] -> list of indices, 'auto' -> 'auto'."""
    if isinstance(value, int) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    text = str(value).strip()
    if text == "auto" or text == "-1":
        return "auto" if text == "auto" else -1
    if "," in text:
        return [int(v) for v in text.split(",") if v.strip()]
    return int(text)


def gpus_to_trainer(gpus: Any) -> dict[str, Any]:
    """The old `--gpus 0,` / `trainer.gpus` -> Lightning 2 `accelerator`/`devices` (empty or None: CPU)."""
    if gpus is None or str(gpus).strip().strip(",") == "":
        return {}
    devices = parse_devices(gpus if isinstance(gpus, int | list) else str(gpus))
    return {"accelerator": "gpu", "devices": devices}


def split_overrides(parser: argparse.ArgumentParser, opt: argparse.Namespace, unknown: list[str]) -> list[str]:
    """The dot-list overrides (`a.b=c`): unknown arguments, and those `--base` (nargs='*') swallowed after the
    configs. Any other unknown argument is an error naming it."""
    swallowed = [b for b in opt.base if "=" in b and not Path(b).is_file()]
    opt.base = [b for b in opt.base if b not in swallowed]
    bad = [u for u in unknown if u.startswith("-") or "=" not in u]
    if bad:
        parser.error(f"unrecognized arguments {bad}; config overrides take the form key.sub=value")
    return swallowed + unknown


def trainer_options(lightning_config: DictConfig, opt: argparse.Namespace) -> dict[str, Any]:
    """`lightning.trainer` from the configs, then the CLI flags; old keys (`gpus`, accelerator 'ddp') are mapped."""
    options = OmegaConf.to_container(lightning_config.get("trainer", OmegaConf.create()), resolve=True)
    if options.get("accelerator") in ("ddp", "ddp_spawn", "dp"):  # PL 1.x spelling
        options["strategy"] = options.pop("accelerator")
    options.update(gpus_to_trainer(options.pop("gpus", None)))
    options.update(gpus_to_trainer(opt.gpus))
    for flag in TRAINER_FLAGS:
        value = getattr(opt, flag)
        if value is not None:
            options[flag] = value
    if "devices" in options:
        options["devices"] = parse_devices(options["devices"])
    if "limit_val_batches" in options and float(options["limit_val_batches"]).is_integer():
        options["limit_val_batches"] = int(options["limit_val_batches"])
    import pytorch_lightning as pl

    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    unknown = sorted(set(options) - known)
    if unknown:
        logger.warning("Ignoring lightning.trainer keys that Lightning 2 does not have: %s", unknown)
    return {k: v for k, v in options.items() if k in known}
