"""The sampling engine: per-image seeds, 2 CPU processes (gloo, through Lightning Fabric) against 1, resumption."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture

from ldm.engine.items import item_seed, make_items, prompt_stems

CONFIG = str(REPO / "configs/tests/golden_tiny_sd.yaml")
PROMPTS = ["a cat and a frog", "a dog", "a red cat", "a frog and a dog"]
TINY = ["--H", "32", "--W", "32", "--f", "2", "--ddim_steps", "3", "--n_iter", "2", "--precision", "full"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def argv(prompts: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--ckpt", str(GOLDEN_WEIGHTS["sd"]), "--from-file", str(prompts),
            "--outdir", str(out), "--n_samples", str(batch), *TINY, *extra]  # fmt: skip


def images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*/*.png"))}


def test_item_seed_is_sha256_of_seed_prompt_index():
    digest = hashlib.sha256(b"42|a cat|3").digest()
    assert item_seed(42, "a cat", 3) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    seeds = {item_seed(42, p, i) for p in ("a cat", "a dog") for i in range(50)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)


def test_items_layout_and_seeds(tmp_path):
    stems = prompt_stems(["a cat", "a/cat", "a dog"])
    assert stems["a dog"] == "a-dog" and stems["a cat"] == "a-cat"  # a collision: the newcomer gets the hash
    assert stems["a/cat"] == "a-cat-" + hashlib.sha256(b"a/cat").hexdigest()[:8]
    # Names once given stay: "A/Cat" collides (case-insensitively) with both and gets its own hash; "a cat" recorded
    # under another name keeps it.
    again = prompt_stems(["A/Cat", "a/cat", "a cat"], given={"a cat": "kept", "a/cat": "a-cat"})
    assert again["a cat"] == "kept" and again["a/cat"] == "a-cat" and again["A/Cat"].startswith("A-Cat-")
    items = make_items(tmp_path, ["a cat", "a dog", "a cat"], 2, ["plain", "ae"], 7,
                       path_of=lambda p, i, m: f"{m}/{stems[p]}/{i}.png", ae_tokens_of=lambda p: "cat")  # fmt: skip
    assert len(items) == 2 * 2 * 2  # the repeated prompt is sampled once
    by_key = {(it.method, it.prompt, it.index): it for it in items}
    assert by_key["plain", "a cat", 1].seed == by_key["ae", "a cat", 1].seed == item_seed(7, "a cat", 1)
    assert by_key["ae", "a cat", 0].ae_tokens == "cat" and by_key["plain", "a cat", 0].ae_tokens == ""
    fixed = make_items(tmp_path, ["a cat", "a dog"], 2, ["plain"], 7, path_of=lambda p, i, m: f"{p}/{i}.png",
                       fixed_code=True)  # fmt: skip
    assert fixed[0].seed == fixed[2].seed != fixed[1].seed  # --fixed_code: sample i of every prompt alike
    with pytest.raises(Exception, match="outside the output folder"):
        make_items(tmp_path, ["../x"], 1, ["plain"], 0, path_of=lambda p, i, m: f"{p}/{i}.png")


def test_image_noise_is_its_own_whatever_the_batch():
    """A&E with per-sample losses and the DDPM and Euler ancestral samplers' step noise: an image does not depend on
    its batch mates or its position (same batch size), and plain and A&E start from the same noise."""
    from conftest import _golden_model

    from ldm import inference
    from ldm.engine.runner import EngineSettings, sample_items
    from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig

    require_fixture(GOLDEN_WEIGHTS["sd"])
    model = _golden_model("sd")
    items = {m: make_items(".", PROMPTS[:3], 1, [m], 3, path_of=lambda p, i, m: f"{m}{len(p)}.png",
                           ae_tokens_of=lambda p: "1,2") for m in ("plain", "ae")}  # fmt: skip
    ae = AttendExciteConfig(attention_res=8, max_iter_to_alter=2, thresholds={0: 0.9}, max_refinement_steps=2,
                            schedule_steps=None)  # fmt: skip
    for sampler_name, method in (("ddim", "ae"), ("ddpm", "plain"), ("euler_a", "ae")):
        settings = EngineSettings(latent_shape=(4, 8, 8), sampler=sampler_name, steps=3, batch_size=2)
        sampler = inference.make_sampler(model, sampler_name)
        a, b, c = items[method]
        with inference.sampling_scope(model):
            first = sample_items(model, sampler, [a, b], settings, ae).latents
            second = sample_items(model, sampler, [c, a], settings, ae).latents
        assert torch.equal(first[0], second[1]), sampler_name  # a: other companion, other position
        with inference.sampling_scope(model):
            alone = sample_items(model, sampler, [a], settings, ae)  # a partial batch: filled up, fillers dropped
        assert alone.latents.shape[0] == 1 and torch.equal(alone.latents[0], first[0]), sampler_name
        if alone.guidance is not None:
            assert all(g["samples"] == [0] for r in alone.guidance.records for g in r["groups"])
        assert (first[0] - first[1]).abs().max() > 0.1  # and a differs from b
    start = {m: sample_items(model, inference.make_sampler(model, "ddim"), items[m][:1],
                             EngineSettings(latent_shape=(4, 8, 8), steps=1), ae) for m in ("plain", "ae")}  # fmt: skip
    assert start["ae"].guidance is not None and start["plain"].guidance is None


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Splitting a run over processes changes no pixel (same batch size: CPU kernels may round batch 1 and batch 2
    differently on some processors; README "Distributed sampling")."""
    require_fixture(GOLDEN_WEIGHTS["sd"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    load_script("stable_txt2img").main(argv(prompts, one, 2))  # 1 process, batch 2
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "stable_txt2img.py"), *argv(prompts, two, 2),
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 made 4 images" in result.stderr and "rank 1 made 4 images" in result.stderr  # both worked
    assert "images (all ranks): 100%" in result.stderr and "8/8" in result.stderr  # one bar for the whole run
    got, expected = images(two), images(one)
    assert len(expected) == len(PROMPTS) * 2 and got.keys() == expected.keys()
    assert all(got[k] == expected[k] for k in expected)  # byte-identical
    assert len(set(expected.values())) == len(expected)  # every image its own


def test_a_killed_run_resumes_with_the_missing_images_only(tmp_path, caplog):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    script = load_script("stable_txt2img")
    script.main(argv(prompts, full, 2, "--skip_grid"))
    expected = images(full)
    # The killed run: the settings record and 3 of the 6 images were written; one of them is a stand-in whose bytes
    # differ, to show that existing images are left alone.
    (resumed / ".engine").mkdir(parents=True)
    (resumed / ".engine" / "settings.json").write_bytes((full / ".engine" / "settings.json").read_bytes())
    kept = sorted(expected)[::2]
    for k in kept:
        (resumed / k).parent.mkdir(parents=True, exist_ok=True)
        (resumed / k).write_bytes(expected[k])
    stand_in = resumed / kept[0]
    stand_in.write_bytes(b"not really a png")
    mtimes = {k: (resumed / k).stat().st_mtime_ns for k in kept}
    with caplog.at_level("INFO"):
        script.main(argv(prompts, resumed, 2, "--skip_grid"))
    assert "3 of 6 images exist already and are skipped" in caplog.text
    assert "rank 0 made 3 images" in caplog.text
    got = images(resumed)
    assert got.keys() == expected.keys()
    assert stand_in.read_bytes() == b"not really a png"
    assert all((resumed / k).stat().st_mtime_ns == mtimes[k] for k in kept)
    assert all(got[k] == expected[k] for k in expected if k != kept[0])
    # Other settings into the same folder: refused, naming what differs.
    with pytest.raises(ValueError, match="other settings.*steps"):
        script.main([*argv(prompts, resumed, 2, "--skip_grid"), "--ddim_steps", "4"])


def test_distributed_options_from_flags():
    import argparse

    from ldm.engine.distributed import _devices, add_distributed_args, distributed_options

    p = argparse.ArgumentParser()
    p.add_argument("--device")
    add_distributed_args(p)
    opts = distributed_options(p.parse_args(["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]))
    assert (opts.accelerator, opts.devices, opts.strategy, opts.num_nodes) == ("cpu", "2", "ddp", 1)
    assert distributed_options(p.parse_args(["--device", "cuda:1"])).devices == "1,"  # the old flag: that device
    assert _devices("1,") == [1] and _devices("2") == 2 and _devices("0,1") == [0, 1]
    with pytest.raises(ValueError, match="--devices 'two'"):
        _devices("two")
    with pytest.raises(ValueError, match="--num_nodes 0"):
        distributed_options(p.parse_args(["--num_nodes", "0"]))
