"""Training CLI (Lightning 2) for latent diffusion models, autoencoders and textual inversion.

Textual inversion (Gal et al. 2022) of a new word `*` from a few images::

    python main.py --base configs/latent-diffusion/txt2img-1p4B-finetune.yaml -t \
        --actual_resume models/ldm/text2img-large/model.ckpt -n my_cat --gpus 0, \
        --data_root data/my_cat --init_word cat

Flags keep the original names (see docs/inversion.md); trainer flags are Lightning 2's (`--accelerator`,
`--devices`, `--precision`, ...) and the old `--gpus 0,` still works. Extra `key.sub=value` arguments are OmegaConf
dot-list overrides merged after the `--base` configs. Importing this module has no side effects; the configs'
`main.DataModuleFromConfig` and `main.ImageLogger` targets resolve to the classes imported here. The flags, the run
folder and config, and the trainer's logger and callbacks are built by `ldm/training/`.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ldm.callbacks import ImageLogger
from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset
from ldm.outputs import claim_folder, write_error
from ldm.training.flags import get_parser, gpus_to_trainer, split_overrides, trainer_options
from ldm.training.run_config import (
    RUN_DIR_ENV,
    apply_inversion_flags,
    check_input_files,
    is_main_process,
    load_config,
    resolve_run,
)
from ldm.training.trainer_setup import install_checkpoint_signal, make_callbacks, make_logger, scale_learning_rate

# The helpers live in ldm/training/; the ones configs and tests reach as ``main.X`` stay importable from here.
__all__ = [
    "DataModuleFromConfig",
    "ImageLogger",
    "RUN_DIR_ENV",
    "RunResult",
    "WrappedDataset",
    "apply_inversion_flags",
    "get_parser",
    "gpus_to_trainer",
    "is_main_process",
    "load_config",
    "main",
    "make_logger",
    "resolve_run",
    "run",
    "scale_learning_rate",
    "split_overrides",
    "trainer_options",
]

logger = logging.getLogger("main")
DISK_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


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
        try:
            trainer.fit(model, data, ckpt_path=resume_ckpt, weights_only=True)  # resume unpickles nothing but tensors
        except OSError as err:
            converted = disk_error(err, f"a checkpoint or log in {logdir}")
            if converted is err:
                raise
            raise converted from err
    has_test = "test" in getattr(data, "dataset_configs", {})
    if not opt.no_test and has_test and not trainer.interrupted:
        trainer.test(model, data)
    return RunResult(trainer, model, logdir)


def disk_error(err: OSError, where: str | os.PathLike) -> OSError:
    """A full disk or a read-only folder met by Lightning's own writers (checkpoints, logs) as one
    :class:`ldm.outputs.OutputError` naming the file (or ``where``), like our writers'; other errors unchanged."""
    if err.errno not in DISK_FULL_OR_READ_ONLY:
        return err
    return write_error(err, err.filename or where) or err


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    run(argv)
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main, debug_flags=("--debug", "-d"), keep_debug_flag=True)
