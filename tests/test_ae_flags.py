"""A&E presets and command-line flags (ldm.ae_flags): YAML files, overrides and errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from ldm.ae_flags import AE_FIELDS, add_attend_excite_args, attend_excite_config, load_ae_config
from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _differences(a: AttendExciteConfig, b: AttendExciteConfig) -> dict[str, tuple]:
    return {f: (getattr(a, f), getattr(b, f)) for f in AE_FIELDS if getattr(a, f) != getattr(b, f)}


def test_official_yaml_is_the_dataclass_default():
    assert _differences(load_ae_config(CONFIGS / "guidance" / "attend_and_excite.yaml"), AttendExciteConfig()) == {}


def test_presets_differ_from_the_official_defaults_only_where_documented():
    official = AttendExciteConfig()
    fork = load_ae_config(CONFIGS / "guidance" / "seed_fork.yaml")
    assert _differences(fork, official) == {
        "max_iter_to_alter": (1000, 25),
        "max_refinement_steps": (40, 20),
        "schedule_steps": (None, 50),
    }
    toy = load_ae_config(CONFIGS / "toyworld" / "attend_and_excite.yaml")
    assert _differences(toy, official) == {"attention_res": (8, 16), "softmax_scale": (10.0, 100.0)}


def test_flags_override_the_yaml():
    parser = argparse.ArgumentParser()
    add_attend_excite_args(parser)
    toy = str(CONFIGS / "toyworld" / "attend_and_excite.yaml")
    args = parser.parse_args(
        ["--ae_config", toy, "--ae_softmax_scale", "5", "--ae_thresholds", "0:0.1,5:0.6", "--ae_schedule_steps", "none"]
    )
    config = attend_excite_config(args)
    assert config.softmax_scale == 5.0 and config.thresholds == {0: 0.1, 5: 0.6} and config.schedule_steps is None
    assert config.attention_res == 8  # from the file
    assert load_ae_config(toy, attention_res=4, scale_factor=None).attention_res == 4  # None keeps the file's value
    assert set(AE_FIELDS) == {f.name for f in dataclasses.fields(AttendExciteConfig)} - {"token_indices"}


def test_bad_preset_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        load_ae_config(tmp_path / "no_such.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("attend_and_excite:\n  softmax_scal: 10\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*softmax_scal"):
        load_ae_config(bad)
    with pytest.raises(ValueError, match="stepsize"):
        load_ae_config(CONFIGS / "guidance" / "attend_and_excite.yaml", stepsize=3)
