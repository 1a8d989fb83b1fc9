"""The run of ``main.py``: its folder (new, or the one ``-r/--resume`` names), which process claims it, and the
merged config with the inversion flags (``--actual_resume``, ``--data_root``, ``--placeholder_string``, ...) applied."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldm.errors import MissingFileError, UserError

DATA_SPLITS = ("train", "validation", "test", "predict")


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
    """The ``--base`` configs merged in order, then the dot-list ``overrides``; a missing file is an error naming it."""
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
