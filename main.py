"""Training CLI (Lightning 2) for latent diffusion models, autoencoders and textual inversion.

Textual inversion (Gal et al. 2022) of a new word `*` from a few images::

    python main.py --base configs/latent-diffusion/txt2img-1p4B-finetune.yaml -t \
        --actual_resume models/ldm/text2img-large/model.ckpt -n my_cat --gpus 0, \
        --data_root data/my_cat --init_word cat

Flags keep the original names (see docs/inversion.md); trainer flags are Lightning 2's (`--accelerator`,
`--devices`, `--precision`, ...) and the old `--gpus 0,` still works. Extra `key.sub=value` arguments are OmegaConf
dot-list overrides merged after the `--base` configs. Importing this module has no side effects; the configs'
`main.DataModuleFromConfig` and `main.ImageLogger` targets resolve to the classes imported here.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.callbacks import CUDACallback, EmbeddingWriter, ImageLogger, SetupCallback
from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset
from ldm.errors import MissingFileError, UserError
from ldm.outputs import claim_folder

__all__ = ["DataModuleFromConfig", "ImageLogger", "WrappedDataset", "get_parser", "main", "run", "RunResult"]

logger = logging.getLogger("main")

DATA_SPLITS = ("train", "validation", "test", "predict")
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
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Boolean value expected, got '{value}'")


def get_parser() -> argparse.ArgumentParser:
    """The original flags (reference spec 1.2) plus the Lightning 2 trainer flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


def resolve_run(opt: argparse.Namespace, now: str) -> tuple[Path, str, str | None, list[str]]:
    """(logdir, run name, checkpoint to resume from, base configs) following the original naming."""
    if opt.name and opt.resume:
        raise UserError("-n/--name and -r/--resume cannot be combined: a resumed run keeps its folder and name.")
    if opt.resume:
        path = Path(opt.resume)
        if not path.exists():
            raise MissingFileError(f"--resume '{path}' does not exist (give a run folder or a checkpoint file)")
        if path.is_file():
            logdir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            ckpt = str(path)
        else:
            logdir = path
            ckpt = str(path / "checkpoints" / "last.ckpt")
            if not Path(ckpt).is_file():
                raise MissingFileError(f"--resume '{path}': no checkpoints/last.ckpt in this run folder")
        saved = sorted(str(p) for p in (logdir / "configs").glob("*.yaml"))
        return logdir, logdir.name, ckpt, saved + list(opt.base)
    if opt.name:
        name = "_" + opt.name
    elif opt.base:
        name = "_" + Path(opt.base[0]).stem
    else:
        name = ""
    prefix = Path(opt.data_root.rstrip("/")).name if opt.datadir_in_name and opt.data_root else ""
    run_name = prefix + now + name + opt.postfix
    return Path(opt.logdir) / run_name, run_name, None, list(opt.base)


RUN_DIR_ENV = "LDM_RUN_DIR"  # the claimed run folder, handed to the processes a DDP launcher starts


def is_main_process() -> bool:
    """True unless the launcher's environment says this process is not global rank 0 (DDP children, SLURM)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def load_config(bases: list[str], overrides: list[str]) -> DictConfig:
    from ldm.util import load_yaml, repo_path

    missing = [b for b in bases if not repo_path(b).is_file()]
    if missing:
        raise MissingFileError(f"--base config(s) not found: {missing}")
    configs = [load_yaml(b, "--base") for b in bases]
    return OmegaConf.merge(*configs, OmegaConf.from_dotlist(overrides))


def check_input_files(opt: argparse.Namespace, resume_ckpt: str | None) -> None:
    """Before anything is built: the checkpoint to resume from opens safely (not truncated, no pickled code), and
    the files named by --actual_resume and --embedding_manager_ckpt exist."""
    from ldm.util import check_checkpoint_file
    from ldm.validation import check_files

    check_files([("--actual_resume", opt.actual_resume, False),
                 ("--embedding_manager_ckpt", opt.embedding_manager_ckpt, False)])  # fmt: skip
    if resume_ckpt:
        check_checkpoint_file(resume_ckpt, "--resume")


def apply_inversion_flags(config: DictConfig, opt: argparse.Namespace) -> None:
    """Copy --actual_resume, --data_root, --embedding_manager_ckpt, --placeholder_string and --init_word into the
    config (the placeholder reaches both the model and the datasets' captions)."""
    from ldm.util import repo_path

    params = config.model.setdefault("params", {})
    if opt.actual_resume:
        params.ckpt_path = opt.actual_resume  # recorded in the saved config, so -r rebuilds the same base model
    data_params = [config.data.params[s].params for s in DATA_SPLITS if "data" in config and s in config.data.params]
    if opt.data_root:
        for dp in data_params:
            dp.data_root = opt.data_root
    for dp in data_params:  # a shipped config's relative data_root works from any working directory
        if dp.get("data_root"):
            dp.data_root = str(repo_path(dp.data_root))
    personal = params.get("personalization_config")
    inversion_flags = [f for f in ("embedding_manager_ckpt", "placeholder_string", "init_word") if getattr(opt, f)]
    if personal is None:
        if inversion_flags:
            raise ValueError(
                f"{['--' + f for f in inversion_flags]} need a config with model.params.personalization_config"
            )
        return
    pparams = personal.setdefault("params", {})
    if opt.embedding_manager_ckpt:
        pparams.embedding_manager_ckpt = opt.embedding_manager_ckpt
    if opt.placeholder_string:
        pparams.placeholder_strings = [opt.placeholder_string]
        for dp in data_params:
            dp.placeholder_token = opt.placeholder_string
    if opt.init_word:
        words = list(pparams.get("initializer_words") or [])
        pparams.initializer_words = [opt.init_word, *words[1:]]


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


def device_count(options: dict[str, Any]) -> int:
    devices = options.get("devices", 1)
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if options.get("accelerator") in ("gpu", "cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def make_logger(kind: str, logdir: Path) -> Any:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    if kind == "auto":
        kind = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "csv"
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=str(logdir), name="tensorboard")
    return CSVLogger(save_dir=str(logdir), name="csv")


def make_callbacks(
    lightning_config: DictConfig, model: Any, logdir: Path, ckptdir: Path, cfgdir: Path, setup_kwargs: dict[str, Any]
) -> list[Any]:
    """Default callbacks (original names and settings), with `lightning.callbacks` / `modelcheckpoint` merged on top."""
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from ldm.util import instantiate_from_config

    ckpt_params: dict[str, Any] = {
        "dirpath": str(ckptdir),
        "filename": "{epoch:06}",
        "verbose": True,
        "save_last": True,
        # overwrite last.ckpt (also when SetupCallback wrote it) instead of adding last-v1.ckpt, last-v2.ckpt, ...
        "enable_version_counter": False,
    }
    if getattr(model, "monitor", None) and getattr(model, "embedding_manager", None) is None:
        ckpt_params.update(monitor=model.monitor, save_top_k=1)  # inversion runs log no EMA metric to monitor
    user_ckpt = lightning_config.get("modelcheckpoint", {}) or {}
    ckpt_params.update(OmegaConf.to_container(user_ckpt.get("params", OmegaConf.create()), resolve=True))
    callbacks_cfg = OmegaConf.merge(
        {
            "image_logger": {
                "target": "main.ImageLogger",
                "params": {"batch_frequency": 750, "max_images": 4, "clamp": True},
            }
        },
        lightning_config.get("callbacks", OmegaConf.create()) or {},
    )
    callbacks = [
        SetupCallback(ckptdir=ckptdir, cfgdir=cfgdir, logdir=logdir, **setup_kwargs),
        EmbeddingWriter(ckptdir),
        ModelCheckpoint(**ckpt_params),
        LearningRateMonitor(logging_interval="step"),
    ]
    for name, cfg in callbacks_cfg.items():
        if cfg is None or cfg.get("target") is None:
            continue
        callback = instantiate_from_config(cfg)
        if isinstance(callback, ImageLogger):
            callback.logdir = logdir
        logger.info("callback %s: %s", name, type(callback).__name__)
        callbacks.append(callback)
    if torch.cuda.is_available():
        callbacks.append(CUDACallback())
    return callbacks


def scale_learning_rate(model: Any, config: DictConfig, options: dict[str, Any], scale: bool) -> None:
    """The original rule: lr = accumulate x n_devices x batch_size x base_lr (x num_nodes, 1 unless multi-node)."""
    base_lr = float(config.model.get("base_learning_rate", 1.0e-4))
    if not scale:
        model.learning_rate = base_lr
        logger.info("Not scaling the learning rate: %.2e", base_lr)
        return
    batch_size = int(config.data.params.batch_size)
    accumulate = int(options.get("accumulate_grad_batches", 1) or 1)
    n_devices = device_count(options)
    nodes = int(options.get("num_nodes", 1) or 1)
    model.learning_rate = accumulate * n_devices * nodes * batch_size * base_lr
    logger.info(
        "learning rate %.2e = %d (accumulate) x %d (devices) x %d (nodes) x %d (batch) x %.2e (base)",
        model.learning_rate, accumulate, n_devices, nodes, batch_size, base_lr,
    )  # fmt: skip


def install_checkpoint_signal(trainer: Any, ckptdir: Path) -> None:
    """SIGUSR1 saves `checkpoints/last.ckpt` (and the embeddings, through the model's checkpoint hook), as before."""
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return

    def save_last(*_: Any) -> None:
        if trainer.global_rank == 0:
            logger.info("SIGUSR1: saving %s", ckptdir / "last.ckpt")
            trainer.save_checkpoint(str(ckptdir / "last.ckpt"))

    signal.signal(signal.SIGUSR1, save_last)


@dataclass
class RunResult:
    """What `run` built: the trainer, the model and the run folder."""

    trainer: Any
    model: Any
    logdir: Path


def run(argv: list[str] | None = None) -> RunResult:
    """Parse `argv`, build the run and train (with -t)."""
    import pytorch_lightning as pl

    from ldm.util import instantiate_from_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = get_parser()
    opt, unknown = parser.parse_known_args(argv)
    overrides = split_overrides(parser, opt, unknown)
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    logdir, run_name, resume_ckpt, bases = resolve_run(opt, now)
    check_input_files(opt, resume_ckpt)
    ckptdir, cfgdir = logdir / "checkpoints", logdir / "configs"
    pl.seed_everything(opt.seed, workers=True)

    config = load_config(bases, overrides)
    lightning_config = config.pop("lightning", OmegaConf.create())
    apply_inversion_flags(config, opt)
    options = trainer_options(lightning_config, opt)
    lightning_config.trainer = OmegaConf.create(options)

    model = instantiate_from_config(config.model)
    data = instantiate_from_config(config.data)
    data.setup("fit")  # build the datasets now, so a bad data folder fails before the trainer starts
    scale_learning_rate(model, config, options, opt.scale_lr)

    if not resume_ckpt:  # a new run gets a folder of its own (a resumed run keeps its folder)
        if is_main_process():
            logdir = claim_folder(logdir, "-n/--name or -l/--logdir")
            os.environ[RUN_DIR_ENV] = str(logdir)
        elif os.environ.get(RUN_DIR_ENV):
            logdir = Path(os.environ[RUN_DIR_ENV])
        run_name, ckptdir, cfgdir = logdir.name, logdir / "checkpoints", logdir / "configs"
    setup_kwargs = {"resume": bool(resume_ckpt), "now": now, "config": config, "lightning_config": lightning_config}
    callbacks = make_callbacks(lightning_config, model, logdir, ckptdir, cfgdir, setup_kwargs)
    trainer = pl.Trainer(
        **options, logger=make_logger(opt.logger, logdir), callbacks=callbacks, default_root_dir=str(logdir)
    )
    logger.info("Run %s in %s", run_name, logdir)
    install_checkpoint_signal(trainer, ckptdir)
    if opt.train:
        trainer.fit(model, data, ckpt_path=resume_ckpt, weights_only=True)  # resume unpickles nothing but tensors
    has_test = "test" in getattr(data, "dataset_configs", {})
    if not opt.no_test and has_test and not trainer.interrupted:
        trainer.test(model, data)
    return RunResult(trainer, model, logdir)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    run(argv)
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main, debug_flags=("--debug", "-d"), keep_debug_flag=True)
