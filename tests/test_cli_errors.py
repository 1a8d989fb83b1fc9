"""Issue 11, section 2: user errors are one ``error:`` line (exit 2), bugs keep their traceback; the sampling flags,
config files, resume checkpoints and relative config paths are checked before anything is loaded."""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture

from ldm.cli import USER_ERROR_STATUS, is_user_error, run_cli, split_debug_flag
from ldm.errors import MissingFileError, UserError
from ldm.util import CheckpointError, ConfigError, describe_unpickling_error, load_yaml, repo_path

TOY_CONFIG = "configs/toyworld/txt2img-inference.yaml"  # relative to the repository, as the README shows it
TOY_WEIGHTS = "models/toyworld/txt2img.safetensors"
TINY_SD = REPO / "configs/tests/golden_tiny_sd.yaml"
TINY_LDM = REPO / "configs/tests/golden_tiny_ldm.yaml"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def toy_argv(tmp_path, *extra: str) -> list[str]:
    """scripts/txt2img.py on the shipped ToyWorld model, as small as it goes."""
    return ["--config", str(REPO / TOY_CONFIG), "--ckpt_path", str(REPO / TOY_WEIGHTS), "--prompt", "a red circle",
            "--outdir", str(tmp_path / "out"), "--n_samples", "1", "--ddim_steps", "2", "--H", "64", "--W", "64",
            *extra]  # fmt: skip


@pytest.fixture
def no_model_loading(monkeypatch):
    """The checks must fail before a model is loaded: loading one fails the test."""
    from ldm import inference

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(inference, "load_model", refuse)


# ------------------------------------------------------------------------------------------------ run_cli


def _raise(err: BaseException):
    def main(argv):
        raise err

    return main


def test_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("LDM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_raise(UserError("--H 60: use --H 48 or 64")), [])
    assert exit_info.value.code == USER_ERROR_STATUS == 2
    err = capsys.readouterr().err
    assert err == "error: --H 60: use --H 48 or 64\n"


@pytest.mark.parametrize("how", ["flag", "flag=1", "flag true", "env"])
def test_debug_shows_the_traceback(capsys, monkeypatch, how):
    seen = {}

    def main(argv):
        seen["argv"] = argv
        raise MissingFileError("--ckpt x.ckpt: no such file")

    monkeypatch.delenv("LDM_DEBUG", raising=False)
    argv = {"flag": ["--debug"], "flag=1": ["--debug=1"], "flag true": ["--debug", "true"], "env": []}[how]
    if how == "env":
        monkeypatch.setenv("LDM_DEBUG", "1")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--prompt", "x", *argv])
    assert exit_info.value.code == 2 and seen["argv"] == ["--prompt", "x"]  # the flag never reaches the parser
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: --ckpt x.ckpt: no such file")


def test_bugs_keep_their_traceback(capsys):
    def library_value_error(argv):
        json.loads("{")  # a ValueError raised inside the standard library: a bug, not the user's input

    with pytest.raises(json.JSONDecodeError):
        run_cli(library_value_error, [])
    with pytest.raises(ZeroDivisionError):
        run_cli(_raise(ZeroDivisionError("x")), [])
    assert "error:" not in capsys.readouterr().err


def test_project_value_errors_are_user_errors():
    from ldm import inference

    with pytest.raises(ValueError) as info:
        inference.make_sampler(None, "k_lms")  # raised by the project's own check, with its message
    assert is_user_error(info.value)
    with pytest.raises(ValueError) as info:
        json.loads("{")
    assert not is_user_error(info.value)
    # the project's error types are user errors wherever they are raised, and keep their built-in bases
    assert is_user_error(CheckpointError("x")) and isinstance(CheckpointError("x"), RuntimeError)
    assert isinstance(MissingFileError("x"), FileNotFoundError) and isinstance(ConfigError("x"), ValueError)


def test_split_debug_flag():
    assert split_debug_flag(["-n", "x", "--debug", "--debug=0"]) == (["-n", "x"], False)
    assert split_debug_flag(["--debug", "--H", "8"]) == (["--H", "8"], True)
    assert split_debug_flag(["-d", "true"], ("--debug", "-d")) == ([], True)


def test_every_script_ends_through_run_cli():
    for path in [REPO / "main.py", *sorted((REPO / "scripts").glob("*.py"))]:
        tail = path.read_text().split('if __name__ == "__main__":')[-1]
        assert "run_cli(main" in tail, f"{path.name} does not end through ldm.cli.run_cli"


def _run_script(args: list[str], cwd, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LDM_DEBUG"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_script_prints_one_error_line_and_exits_2(tmp_path):
    """End to end: scripts/txt2img.py from another folder, a bad --H: one line, status 2; LDM_DEBUG adds the
    traceback."""
    args = [str(REPO / "scripts/txt2img.py"), "--config", TOY_CONFIG, "--ckpt", TOY_WEIGHTS, "--H", "60"]
    done = _run_script(args, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert lines[-1] == (
        "error: --H 60: image sides must be multiples of 16 for this model (configs/toyworld/txt2img-inference.yaml: "
        "the first stage downsamples by 4 and the UNet by 4), at least 16; use --H 48 or 64"
    )
    debug = _run_script(args, tmp_path, {"LDM_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "error: --H 60" in debug.stderr


# ---------------------------------------------------------------------------------- flags checked before loading


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--H", "60"], r"--H 60: image sides must be multiples of 16 .* use --H 48 or 64$"),
        (["--W", "8"], r"--W 8: .*at least 16; use --W 16$"),
        (["--W", "-16"], r"--W -16: .*use --W 16$"),
        (["--n_samples", "0"], r"--n_samples 0: must be at least 1"),
        (["--n_iter", "-1"], r"--n_iter -1: must be at least 1"),
        (["--ddim_steps", "0"], r"--ddim_steps 0: must be between 1 and 1000"),
        (["--ddim_steps", "1001", "--plms"], r"--ddim_steps 1001: must be between 1 and 1000"),
        (["--ddpm", "--ddim_steps", "0"], r"--ddim_steps 0: must be between 1 and 1000"),
        (["--ddpm", "--ddim_steps", "-3"], r"--ddim_steps -3: must be between 1 and 1000"),
        (["--ae_tokens", "circle", "--W", "128"], r"square attention maps: --H 64 and --W 128 differ"),
        (["--plms", "--ddpm"], r"^--plms and --ddpm select different samplers; give one \(or --sampler NAME\)$"),
        (["--sampler", "euler", "--plms"], r"^--plms and --sampler euler select different samplers; drop one"),
        (["--sampler", "dpmpp_2m", "--ddim_eta", "0.5"], r"^--ddim_eta 0.5 applies to DDIM only; --sampler dpmpp_2m"),
        (["--plms", "--ddim_eta", "1"], r"^--ddim_eta 1 applies to DDIM only; --sampler plms takes no eta"),
        (["--sampler", "unipc", "--ddim_steps", "1001"], r"--ddim_steps 1001: must be between 1 and 1000"),
    ],
)
def test_txt2img_flags_are_checked_before_loading(tmp_path, no_model_loading, extra, message):
    with pytest.raises(UserError, match=message):
        load_script("txt2img").main(toy_argv(tmp_path, *extra))
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_named_before_loading(tmp_path, no_model_loading):
    argv = toy_argv(tmp_path)
    argv[argv.index("--ckpt_path") + 1] = str(tmp_path / "nope.ckpt")
    with pytest.raises(MissingFileError, match=r"--ckpt_path .*nope.ckpt: no such file"):
        load_script("txt2img").main(argv)
    with pytest.raises(MissingFileError, match=r"--ckpt .*nope.ckpt: no such file"):
        load_script("stable_txt2img").main(["--config", str(TINY_SD), "--ckpt", str(tmp_path / "nope.ckpt")])


def test_stable_txt2img_checks_f_and_its_own_steps(tmp_path, no_model_loading):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    base = ["--config", str(TINY_SD), "--ckpt", str(GOLDEN_WEIGHTS["sd"]), "--outdir", str(tmp_path)]
    with pytest.raises(UserError, match=r"--f 8 does not match .*golden_tiny_sd.yaml, whose model has 2"):
        load_script("stable_txt2img").main([*base, "--f", "8"])
    # the tiny SD model: first stage x2, UNet x4 -> multiples of 8
    with pytest.raises(UserError, match=r"--H 36: .*multiples of 8 .*use --H 32 or 40"):
        load_script("stable_txt2img").main([*base, "--H", "36", "--W", "32"])
    with pytest.raises(UserError, match=r"--ddim_steps 0"):
        load_script("stable_txt2img").main([*base, "--H", "32", "--W", "32", "--ddpm", "--ddim_steps", "0"])


def test_attention_res_suggestion_is_valid(tmp_path, caplog):
    """The A&E error names the map sides this size really has; the suggested one then runs."""
    with pytest.raises(UserError, match=r"--ae_attention_res 16: at --H 64 --W 64 .* 8x8, 4x4") as info:
        load_script("txt2img").main(toy_argv(tmp_path, "--ae_tokens", "circle"))  # the official default, 16
    suggested = re.search(r"use --ae_attention_res (\d+)", str(info.value)).group(1)
    larger = re.search(r"or --H/--W (\d+)", str(info.value)).group(1)
    assert (suggested, larger) == ("8", "128")
    with caplog.at_level(logging.INFO):
        load_script("txt2img").main(toy_argv(tmp_path, "--ae_tokens", "circle", "--ae_attention_res", suggested,
                                             "--ae_max_refinement_steps", "1"))  # fmt: skip
    assert "A&E excites positions: 3 (circle)" in caplog.text
    assert (tmp_path / "out" / "samples" / "0000.png").is_file()


def test_negative_scale_warns(caplog):
    from ldm.validation import check_sampling

    with caplog.at_level(logging.WARNING, logger="ldm.validation"):
        check_sampling(REPO / TOY_CONFIG, H=64, W=64, steps=2, scale=-2.0)
    assert "--scale -2 is negative" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldm.validation"):
        check_sampling(REPO / TOY_CONFIG, H=64, W=64, steps=2, scale=3.0)
    assert "negative" not in caplog.text


def test_ddpm_sampler_refuses_zero_and_negative_steps():
    """The library too: 0 used to run all 1000 steps, -3 returned the starting noise."""
    from ldm.models.diffusion.ddpm_sampler import DDPMSampler

    sampler = DDPMSampler.__new__(DDPMSampler)
    sampler.ddpm_num_timesteps = 1000
    assert sampler.timesteps_for(None, "uniform", 0.0) == list(range(999, -1, -1))
    assert sampler.timesteps_for(3, "uniform", 0.0) == [2, 1, 0]
    for steps in (0, -3, 1001):
        with pytest.raises(ValueError, match=f"1..1000 steps, got {steps}"):
            sampler.timesteps_for(steps, "uniform", 0.0)


def test_evaluation_scripts_check_their_flags(tmp_path, no_model_loading):
    clip = tmp_path / "clip"  # enough of a CLIP folder to pass the folder check; nothing is loaded
    clip.mkdir()
    (clip / "config.json").write_text('{"model_type": "clip"}')
    (clip / "model.safetensors").write_bytes(b"")
    (clip / "tokenizer.json").write_text("{}")
    weights = str(REPO / TOY_WEIGHTS)
    ae = ["--generate", "--config", TOY_CONFIG, "--ckpt_path", weights, "--clip_model", str(clip),
          "--out_dir", str(tmp_path / "ae"), "--max_prompts", "1"]  # fmt: skip
    with pytest.raises(UserError, match=r"--ddim_steps 0: must be between 1 and 1000"):
        load_script("evaluate_attend_excite").main([*ae, "--ddim_steps", "0"])
    with pytest.raises(UserError, match=r"--ae_attention_res 16: .*use --ae_attention_res 8 or 4"):
        load_script("evaluate_attend_excite").main(ae)  # A&E always runs there, at the official 16 by default
    with pytest.raises(UserError, match=r"--batch_size 0: must be at least 1"):
        load_script("evaluate_attend_excite").main([*ae, "--batch_size", "0", "--ae_attention_res", "8"])
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(data / "a.png")
    model_argv = ["--prompt", "a photo of *", "--config", TOY_CONFIG, "--ckpt_path", weights, "--data_dir", str(data),
                  "--clip_model", str(clip), "--embedding_path", weights, "--out_dir", str(tmp_path / "m")]  # fmt: skip
    with pytest.raises(UserError, match=r"--n_samples 0: must be at least 1"):
        load_script("evaluate_model").main([*model_argv, "--n_samples", "0"])
    with pytest.raises(UserError, match=r"--H 100: .*use --H 96 or 112"):
        load_script("evaluate_model").main([*model_argv, "--H", "100"])
    toy = load_script("evaluate_toyworld")
    with pytest.raises(UserError, match=r"--steps 0: must be between 1 and 1000"):
        toy.main(["--steps", "0", "--outdir", str(tmp_path / "t")])
    with pytest.raises(UserError, match=r"--attention_res 16: at --H 64 --W 64 .*use --attention_res 8 or 4"):
        toy.main(["--attention_res", "8,16", "--outdir", str(tmp_path / "t")])
    with pytest.raises(UserError, match=r"--second_ae_config"):
        toy.main(["--toy", "2", "--second_ae_config", str(tmp_path / "missing.yaml"), "--outdir", str(tmp_path / "t")])
    with pytest.raises(UserError, match=r"--n_geneval -1: give 0 \(no GenEval tasks\) or more images per task"):
        toy.main(["--methods", "plain,ae", "--n_geneval", "-1", "--outdir", str(tmp_path / "t")])
    with pytest.raises(UserError, match=r"--guidance nosuch: unknown guidance method"):
        toy.main(["--methods", "plain,nosuch", "--outdir", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()  # nothing written before the checks
    words = load_script("learn_toyworld_words")
    with pytest.raises(UserError, match=r"--steps 0: give at least 1 inversion step per word"):
        words.main(["--steps", "0", "--logdir", str(tmp_path / "w")])
    with pytest.raises(UserError, match=r"--n_check -2: give 0 \(no check\) or more samples"):
        words.main(["--n_check", "-2", "--logdir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_toyworld_tuning_checks_its_variants(no_model_loading):
    for script, argv in (("toyworld_ae_ablation", []), ("toyworld_tuning", ["--method", "ae"])):
        with pytest.raises(UserError, match=r"unknown variant 'step size 7' of ae; known: official, no iterative"):
            load_script(script).main([*argv, "--variants", "official,step size 7"])  # names the known ones
    with pytest.raises(UserError, match="expected NAME=FIELD:VALUE"):
        load_script("toyworld_tuning").main(["--method", "conform", "--variants", "mine=temperature"])


def test_ae_message_for_a_latent_the_unet_cannot_divide():
    """blocks_at_resolution (reached without the script's checks) suggests only sides the UNet really makes."""
    from conftest import _golden_model

    from ldm.models.diffusion.guidance.attend_excite_maps import blocks_at_resolution

    require_fixture(GOLDEN_WEIGHTS["ldm"])
    unet = _golden_model("ldm").model.diffusion_model  # channel_mult [1, 2, 2]: latent sides must be multiples of 4
    assert blocks_at_resolution(unet, (16, 16), 8)
    with pytest.raises(ValueError, match=r"one of \[16, 8, 4\]"):
        blocks_at_resolution(unet, (16, 16), 5)
    with pytest.raises(ValueError, match="latent side must be a multiple of 4") as info:
        blocks_at_resolution(unet, (15, 15), 16)
    assert "one of" not in str(info.value)
    with pytest.raises(ValueError, match="square attention maps"):
        blocks_at_resolution(unet, (16, 32), 8)


# --------------------------------------------------------------------------------------------------- config files


def test_yaml_syntax_error_names_file_and_line(tmp_path, no_model_loading):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: x\n   params: 1\n")
    with pytest.raises(ConfigError, match=r"--config .*bad.yaml, line 3, column 10: YAML syntax error"):
        load_script("txt2img").main(["--config", str(bad), "--ckpt_path", str(REPO / TOY_WEIGHTS)])
    import main

    with pytest.raises(ConfigError, match=r"--base .*bad.yaml, line 3"):
        main.load_config([str(bad)], [])


def test_binary_config_and_prompt_file_are_named(tmp_path, no_model_loading):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes((REPO / TOY_WEIGHTS).read_bytes()[:4096])
    with pytest.raises(ConfigError, match=r"--config .*weights.yaml: not a text file"):
        load_yaml(binary)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml: not a UTF-8 text file"):
        load_yaml(latin)
    with pytest.raises(UserError, match=r"--from-file .*weights.yaml: not a"):
        load_script("txt2img").main(toy_argv(tmp_path, "--from-file", str(binary)))


# ------------------------------------------------------------------------------------------------------- resume


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _run_folder(tmp_path, ckpt_bytes: bytes):
    run = tmp_path / "run"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "project.yaml").write_text(TINY_LDM.read_text())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt_bytes)
    return run


def test_resume_from_code_carrying_checkpoint_is_refused(tmp_path):
    import main

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, tmp_path / "evil.ckpt")
    run = _run_folder(tmp_path, (tmp_path / "evil.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"--resume: refused to load '.*run/checkpoints/last.ckpt'") as info:
        main.main(["-t", "-r", str(run)])
    assert "weights_only" not in str(info.value) and "GLOBAL posix.mkdir" in str(info.value)
    assert not marker.exists()


def test_resume_from_truncated_checkpoint_is_refused(tmp_path):
    import main

    torch.save({"state_dict": {"x": torch.zeros(1000)}}, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    run = _run_folder(tmp_path, data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"--resume: checkpoint '.*last.ckpt' is truncated or corrupt"):
        main.main(["-t", "-r", str(run)])


def test_unpickling_message_of_this_torch_never_recommends_weights_only_false(tmp_path):
    """The real text of the installed torch's refusal (2.13: 'Trying to load unsupported GLOBAL ...')."""
    import pickle

    torch.save({"payload": _RunsCode(str(tmp_path / "x"))}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(tmp_path / "evil.pt", weights_only=True)
    short = describe_unpickling_error(info.value)
    assert "GLOBAL posix.mkdir" in short and "weights_only" not in short and "False" not in short
    # the older wording still matches
    assert describe_unpickling_error(ValueError("Weights only load failed.\nUnsupported global: GLOBAL a.B")) == (
        "Unsupported global: GLOBAL a.B"
    )


def test_missing_actual_resume_is_named_before_the_model_is_built(tmp_path):
    import main

    with pytest.raises(MissingFileError, match=r"--actual_resume .*nope.ckpt: no such file"):
        main.main(["-t", "--base", str(TINY_LDM), "--actual_resume", str(tmp_path / "nope.ckpt"),
                   "-l", str(tmp_path / "logs")])  # fmt: skip
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------------------------------ paths inside shipped configs


def test_txt2img_runs_from_another_folder(tmp_path, monkeypatch):
    """The ToyWorld config names its vocabulary relative to the repository; the working directory does not matter."""
    monkeypatch.chdir(tmp_path)
    argv = ["--config", TOY_CONFIG, "--ckpt_path", TOY_WEIGHTS, "--prompt", "a red circle", "--outdir", "out",
            "--n_samples", "1", "--ddim_steps", "1", "--H", "64", "--W", "64"]  # fmt: skip
    load_script("txt2img").main(argv)
    assert (tmp_path / "out" / "samples" / "0000.png").is_file()


def test_repo_path_prefers_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repo_path("configs/toyworld/vocab.txt") == REPO / "configs/toyworld/vocab.txt"
    (tmp_path / "configs/toyworld").mkdir(parents=True)
    (tmp_path / "configs/toyworld/vocab.txt").write_text("[PAD]\n")
    assert repo_path("configs/toyworld/vocab.txt").resolve() == tmp_path / "configs/toyworld/vocab.txt"
    assert repo_path("no/such/file.txt") == repo_path("no/such/file.txt")  # unchanged when found nowhere
    assert str(repo_path("no/such/file.txt")) == "no/such/file.txt"


def test_main_finds_a_shipped_configs_data_from_another_folder(tmp_path, monkeypatch):
    """configs/toyworld/finetune.yaml names data/toyworld/heldout relative to the repository."""
    import main

    monkeypatch.chdir(tmp_path)
    opt, _ = main.get_parser().parse_known_args(["--base", "configs/toyworld/finetune.yaml"])
    config = main.load_config(opt.base, [])
    main.apply_inversion_flags(config, opt)
    assert config.data.params.train.params.data_root == str(REPO / "data/toyworld/heldout")


# ------------------------------------------------------------------------------------------------ issue 20


def one_error_line(capsys, main, argv, status: int = 2) -> str:
    """Run ``main`` through run_cli: exactly one ``error:`` line, no traceback, exit ``status``."""
    with pytest.raises(SystemExit) as info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert info.value.code == status and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_scale_is_refused_before_loading(tmp_path, no_model_loading, value):
    with pytest.raises(UserError, match=rf"--scale {value}: the guidance scale must be a finite number"):
        load_script("txt2img").main(toy_argv(tmp_path, f"--scale={value}"))
    assert not (tmp_path / "out").exists()


def test_scale_zero_warns_that_the_prompt_is_ignored(caplog):
    from ldm.validation import check_sampling

    with caplog.at_level(logging.WARNING, logger="ldm.validation"):
        check_sampling(REPO / TOY_CONFIG, H=64, W=64, steps=2, scale=0.0)
    assert "--scale 0 ignores the prompt" in caplog.text


def test_explorer_refuses_a_busy_port_and_a_non_finite_scale(capsys, no_model_loading):
    import socket

    pytest.importorskip("gradio")
    explore = load_script("explore")
    with socket.socket() as busy:  # another program listening on the port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error_line(capsys, explore.main, ["--port", str(port)])
        match = re.fullmatch(rf"error: --port {port}: the port is in use on 127.0.0.1 \(another program listens on "
                             r"it\); use --port (\d+)", line)  # fmt: skip
        assert match, line
        with socket.socket() as suggested:  # the suggestion is free
            suggested.bind(("127.0.0.1", int(match.group(1))))
    line = one_error_line(capsys, explore.main, ["--scale", "nan", "--port", str(port)])
    assert line.startswith("error: --scale nan: the guidance scale must be a finite number")


def test_corrupt_and_unsafe_embedding_files_get_different_messages(tmp_path, capsys):
    """50 MB of random bytes is a corrupt file, not a malicious one; a file that pickles code is refused as unsafe
    (and nothing runs). convert_embedding.py and merge_embeddings.py print ``error:`` like every script."""
    from ldm.modules.embedding_interop import read_embeddings

    convert = load_script("convert_embedding").main
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(50 * 2**20))
    line = one_error_line(capsys, convert, ["--input", str(noise), "--output", str(tmp_path / "out.pt")])
    assert line == (f"error: Embeddings file '{noise}' is corrupt: it is not a torch file (no readable pickle in it). "
                    "Save or download it again.")  # fmt: skip
    for seed in range(40):  # random bytes make torch's unpickler raise many error types: all are "corrupt"
        (tmp_path / "small.pt").write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(ValueError, match="is corrupt"):
            read_embeddings(tmp_path / "small.pt")
    marker = tmp_path / "pwned"
    torch.save({"string_to_param": {"*": _RunsCode(str(marker))}}, tmp_path / "evil.pt")
    line = one_error_line(capsys, convert, ["--input", str(tmp_path / "evil.pt"), "--output", str(tmp_path / "o.pt")])
    assert line.startswith(f"error: Refused to load '{tmp_path / 'evil.pt'}': it contains objects other than tensors")
    assert not marker.exists() and not (tmp_path / "out.pt").exists() and not (tmp_path / "o.pt").exists()
    merge = load_script("merge_embeddings").main
    line = one_error_line(capsys, merge, ["--manager_ckpts", str(noise), "--output_path", str(tmp_path / "m.pt")])
    assert line.startswith(f"error: Embeddings file '{noise}' is corrupt")


@pytest.mark.parametrize("writer", ["safetensors", "lightning"])
def test_full_disk_during_inversion_is_one_error_line(tmp_path, capsys, caplog, monkeypatch, writer):
    """A full disk during an inversion, met by the embedding writer's safetensors twin (safetensors raises its own
    error type) or by Lightning's checkpoint writer: one ``error:`` line naming the file or the run, no traceback
    (the callbacks' own failed saves on the way out are one warning each), no partial file."""
    import lightning_fabric.plugins.io.torch_io as torch_io
    import safetensors.torch
    from inversion_helpers import inversion_argv, make_images
    from safetensors import SafetensorError

    import main

    def safetensors_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"part")  # a few bytes, then the disk is full (safetensors 0.8's message)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def checkpoint_full(checkpoint, filepath):
        raise OSError(errno.ENOSPC, "No space left on device")  # fsspec's write: no file name in the error

    if writer == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file", safetensors_full)
    else:
        monkeypatch.setattr(torch_io, "_atomic_save", checkpoint_full)
    monkeypatch.delenv("LDM_DEBUG", raising=False)
    argv = inversion_argv(make_images(tmp_path / "data", count=2), tmp_path / "logs") + [
        "lightning.modelcheckpoint.params.every_n_train_steps=2",
        "lightning.callbacks.image_logger.params.disabled=true",
    ]
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as info:
        run_cli(main.main, argv, debug_flags=("--debug", "-d"), keep_debug_flag=True)
    err = capsys.readouterr().err
    (run,) = (tmp_path / "logs").iterdir()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    where = (
        run / "checkpoints" / "embeddings.safetensors" if writer == "safetensors" else f"a checkpoint or log in {run}"
    )
    assert info.value.code == 2 and lines == [f"error: [Errno 28] no space left on device while writing {where}"], err
    assert "Traceback" not in err and not any(r.exc_info for r in caplog.records), caplog.text
    from ldm.modules.embedding_interop import read_embeddings

    files = sorted((run / "checkpoints").iterdir())
    assert not [p for p in files if p.name.startswith(".") or p.suffix == ".ckpt"]  # no temporary or partial file
    for path in files:  # what was written before the disk filled up is complete
        assert read_embeddings(path).vectors
    assert writer == "lightning" or all(p.suffix == ".pt" for p in files)  # the failed twins are not there


@pytest.mark.parametrize("name", ["x.txt", "x", "x.PT"])
def test_embedding_output_no_reader_accepts_is_refused(tmp_path, capsys, name):
    """convert_embedding.py --output x.txt used to write a file its own reader refuses; merge_embeddings.py too."""
    from ldm.modules import embedding_interop as ei

    source = ei.write_embeddings(ei.Embeddings({"*": torch.randn(1, 768)}, {"*": 265}), tmp_path / "e.pt")
    convert = load_script("convert_embedding").main
    line = one_error_line(capsys, convert, ["--input", str(source), "--output", str(tmp_path / name)])
    assert line == (f"error: cannot write '{tmp_path / name}': no reader accepts the extension '{Path(name).suffix}'; "
                    "end the name in .safetensors or one of .pt, .bin, .ckpt, .pth")  # fmt: skip
    merge = load_script("merge_embeddings").main
    line = one_error_line(capsys, merge, ["--manager_ckpts", str(source), "-sd", "--output_path", str(tmp_path / name)])
    assert "no reader accepts the extension" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.pt"]  # nothing written


def test_a_toyworld1_embedding_is_refused_by_toyworld2(tmp_path, capsys):
    """Both toys' text encoders are 128 wide; ToyWorld 1's is BERT, ToyWorld 2's CLIP. An embedding learned on the
    first, given to the second, used to load silently; it is one error line naming both families."""
    from ldm import inference

    toy1 = inference.load_model(REPO / TOY_CONFIG, REPO / TOY_WEIGHTS)
    toy1.embedding_manager.save(tmp_path / "toy1.pt")
    argv = ["--config", str(REPO / "configs/toyworld2/txt2img-inference.yaml"), "--ckpt_path",
            str(REPO / "models/toyworld2/txt2img.safetensors"), "--embedding_path", str(tmp_path / "toy1.pt"),
            "--prompt", "a photo of *", "--outdir", str(tmp_path / "out"), "--n_samples", "1", "--ddim_steps", "1",
            "--H", "64", "--W", "64"]  # fmt: skip
    line = one_error_line(capsys, load_script("txt2img").main, argv)
    assert line.startswith(f"error: Embeddings '{tmp_path / 'toy1.pt'}' were learned for LDM text2img-large (BERT "
                           "text encoder); this model is SD v1 (CLIP ViT-L/14 text encoder)")  # fmt: skip
    assert "same size (128)" in line and not (tmp_path / "out" / "samples").exists()
