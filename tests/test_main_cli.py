"""main.py without training: flags, config merging, run naming, trainer options, learning-rate scaling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from inversion_helpers import INVERSION_TINY, TINY_LDM, make_images
from omegaconf import OmegaConf

import main


def _opt(*argv: str):
    opt, unknown = main.get_parser().parse_known_args(list(argv))
    return opt, unknown


def test_import_has_no_side_effects(tmp_path):
    code = "import main, logging; assert not logging.getLogger().handlers; print(main.DataModuleFromConfig.__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ldm.data.datamodule" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [("0,", {"accelerator": "gpu", "devices": [0]}), ("0,1", {"accelerator": "gpu", "devices": [0, 1]}),
     ("2", {"accelerator": "gpu", "devices": 2}), ("", {}), (None, {})],
)  # fmt: skip
def test_old_gpus_flag_maps_to_lightning2(gpus, expected):
    assert main.gpus_to_trainer(gpus) == expected


def test_trainer_options_merge_order():
    lightning = OmegaConf.create({"trainer": {"benchmark": True, "max_steps": 6100, "gpus": "0,", "accelerator": "ddp",
                                              "resume_from_checkpoint": "x"}})  # fmt: skip
    opt, _ = _opt("--max_steps", "7", "--precision", "bf16-mixed", "--devices", "0,1")
    options = main.trainer_options(lightning, opt)
    assert options == {"benchmark": True, "max_steps": 7, "accelerator": "gpu", "devices": [0, 1],
                       "strategy": "ddp", "precision": "bf16-mixed"}  # fmt: skip


def test_dotlist_overrides_and_bad_arguments():
    opt, unknown = _opt("--base", TINY_LDM, "model.params.embedding_reg_weight=0.5", "data.params.batch_size=3")
    overrides = main.split_overrides(main.get_parser(), opt, unknown)
    assert opt.base == [TINY_LDM]
    config = main.load_config(opt.base, overrides)
    assert config.model.params.embedding_reg_weight == 0.5 and config.data.params.batch_size == 3
    with pytest.raises(SystemExit):
        main.split_overrides(main.get_parser(), opt, ["--not-a-flag"])


def test_run_name_and_resume_paths(tmp_path):
    opt, _ = _opt("--base", TINY_LDM, "--data_root", "/x/cat/", "-l", str(tmp_path), "-f", "_v2")
    logdir, name, ckpt, bases = main.resolve_run(opt, "2024-01-01T00-00-00")
    assert name == "cat2024-01-01T00-00-00_golden_tiny_ldm_v2" and logdir == tmp_path / name and ckpt is None
    opt, _ = _opt("-n", "mine", "--datadir_in_name", "false", "--data_root", "/x/cat")
    assert main.resolve_run(opt, "NOW")[1] == "NOW_mine"
    run = tmp_path / "run"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "a-project.yaml").write_text("model: {}\n")
    opt, _ = _opt("-r", str(run))
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        main.resolve_run(opt, "NOW")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    logdir, name, ckpt, bases = main.resolve_run(opt, "NOW")
    assert (logdir, name, ckpt) == (run, "run", str(run / "checkpoints" / "last.ckpt"))
    assert bases == [str(run / "configs" / "a-project.yaml")]
    with pytest.raises(ValueError, match="cannot be combined"):
        main.resolve_run(_opt("-r", str(run), "-n", "x")[0], "NOW")


def test_placeholder_string_reaches_model_and_captions(tmp_path):
    data_root = make_images(tmp_path / "imgs", count=1)
    opt, _ = _opt("--base", TINY_LDM, INVERSION_TINY, "--data_root", str(data_root), "--placeholder_string", "@",
                  "--init_word", "dog", "--embedding_manager_ckpt", "e.pt", "--actual_resume", "m.ckpt")  # fmt: skip
    config = main.load_config(opt.base, [])
    main.apply_inversion_flags(config, opt)
    personal = config.model.params.personalization_config.params
    assert personal.placeholder_strings == ["@"] and personal.initializer_words == ["dog"]
    assert personal.embedding_manager_ckpt == "e.pt" and config.model.params.ckpt_path == "m.ckpt"
    data = main.DataModuleFromConfig(**OmegaConf.to_container(config.data.params))
    data.setup("fit")
    captions = [data.datasets["train"][i]["caption"] for i in range(5)]
    assert all("@" in c and "*" not in c for c in captions)
    assert data.val_dataloader is not None and data.test_dataloader is None


def test_inversion_flags_need_personalization_config():
    opt, _ = _opt("--placeholder_string", "@")
    config = OmegaConf.create({"model": {"params": {}}})
    with pytest.raises(ValueError, match="personalization_config"):
        main.apply_inversion_flags(config, opt)


def test_scale_lr_rule():
    class Model:
        learning_rate = 0.0

    config = OmegaConf.create({"model": {"base_learning_rate": 5.0e-3}, "data": {"params": {"batch_size": 4}}})
    model = Model()
    main.scale_learning_rate(model, config, {"accelerator": "gpu", "devices": [0]}, scale=True)
    assert model.learning_rate == pytest.approx(0.02)  # the original LDM value: 1 x 1 x 4 x 5e-3
    main.scale_learning_rate(model, config, {"devices": 2, "accumulate_grad_batches": 3}, scale=True)
    assert model.learning_rate == pytest.approx(3 * 2 * 4 * 5e-3)
    main.scale_learning_rate(model, config, {}, scale=False)
    assert model.learning_rate == 5e-3


def test_logger_falls_back_to_csv(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import CSVLogger

    from ldm.training import trainer_setup

    find_spec = trainer_setup.importlib.util.find_spec

    def no_tensorboard(name, *args):
        return None if name == "tensorboard" else find_spec(name, *args)

    monkeypatch.setattr(trainer_setup.importlib.util, "find_spec", no_tensorboard)
    assert isinstance(main.make_logger("auto", Path(tmp_path)), CSVLogger)
