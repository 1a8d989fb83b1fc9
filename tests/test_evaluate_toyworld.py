"""The statistics, prompt sets and report of the ToyWorld evaluation (ldm.toyworld: stats, prompts, report, the toys'
defaults in benchmarks; run by scripts/evaluate_toyworld.py), checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ldm.toyworld.benchmarks import OFFICIAL_AE_CONFIG, TOYS, ae_methods
from ldm.toyworld.prompts import colour_and_shape_specs, placeholder_prompts, subject_prompts
from ldm.toyworld.report import evaluation_headline, merge_section
from ldm.toyworld.stats import bootstrap_diff, wilson


def test_wilson_interval_matches_the_closed_form():
    # Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), computed here term by term
    for k, n in [(5, 10), (0, 20), (20, 20), (13, 16)]:
        z, p = 1.96, k / n
        denom = 1 + z**2 / n
        centre = p + z**2 / (2 * n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        lo, hi = wilson(k, n)
        assert lo == pytest.approx((centre - half) / denom, abs=1e-12)
        assert hi == pytest.approx((centre + half) / denom, abs=1e-12)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook value


def test_paired_bootstrap_interval():
    a = np.zeros(50, bool)
    b = np.ones(50, bool)
    assert bootstrap_diff(a, b) == (1.0, 1.0, 1.0)  # every pair improves: no spread
    rng = np.random.default_rng(3)
    a, b = rng.random(400) < 0.3, rng.random(400) < 0.5
    mean, lo, hi = bootstrap_diff(a, b, n_boot=4000)
    d = b.astype(float) - a.astype(float)
    assert mean == pytest.approx(d.mean())
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))  # the normal approximation the percentile interval approaches
    assert lo == pytest.approx(d.mean() - half, abs=0.015) and hi == pytest.approx(d.mean() + half, abs=0.015)
    assert bootstrap_diff(b, a, n_boot=4000)[0] == pytest.approx(-mean)


def test_prompt_sets_name_distinct_subjects_and_their_words():
    prompts, specs = subject_prompts(20, 3, seed=5)
    assert prompts == subject_prompts(20, 3, seed=5)[0]  # fixed by the seed
    for prompt, spec in zip(prompts, specs, strict=True):
        shapes = spec.split(",")
        assert len(shapes) == len(set(shapes)) == 3 and all(s in prompt for s in shapes)
    two, _ = subject_prompts(4, 2, seed=0)
    assert all(p.count(" and ") == 1 for p in two)
    words = colour_and_shape_specs(["a red circle and a blue square", "a * and a green triangle"])
    assert words == ["red,circle,blue,square", "*,green,triangle"]
    star_prompts, star_specs = placeholder_prompts(6, seed=2)
    assert all(p.startswith("a * and a ") and s.startswith("*,") for p, s in zip(star_prompts, star_specs))


def test_each_toy_replaces_only_its_own_results_section():
    first = merge_section("", "1", "## toy one\n| a | 1 |")
    assert first.startswith("# ToyWorld results\n") and "## toy one" in first
    both = merge_section(first, "2", "## toy two\n| b | 2 |")
    assert both.index("## toy one") < both.index("## toy two")
    again = merge_section(both, "1", "## toy one, rerun")
    assert "## toy one, rerun" in again and "| a | 1 |" not in again and "## toy two\n| b | 2 |" in again
    assert again.count("toyworld1 results: begin") == 1 and again.count("toyworld2 results: end") == 1
    reordered = merge_section(merge_section("# ToyWorld results\n", "2", "## two"), "1", "## one")
    assert reordered.index("## one") < reordered.index("## two")  # sections stay in toy order


def test_toy_defaults_name_existing_configs():
    for key, toy in TOYS.items():
        for path in (toy.config, toy.finetune, toy.ae_config):
            assert path.is_file(), f"toy {key}: {path} missing"
    assert TOYS["2"].ae_config == OFFICIAL_AE_CONFIG  # the SD toy is measured with the official defaults
    assert TOYS["2"].attention_res.split(",")[0] == "16"


def test_second_ae_setting_is_compared_at_its_own_map_side():
    """ToyWorld 2 also measures the first toy's preset (x10 softmax, 8x8 maps) beside the official defaults at 16x16."""
    toy = TOYS["2"]
    methods = ae_methods(toy.ae_config, OFFICIAL_AE_CONFIG, [16], False, second_ae_config=toy.second_ae_config)
    labels = [m[0] for m in methods]
    assert labels == ["A&E official 16x16", "A&E toyworld/attend_and_excite 8x8"]
    official, preset = methods[0][1], methods[1][1]
    assert (official.softmax_scale, official.attention_res) == (100.0, 16)
    assert (preset.softmax_scale, preset.attention_res) == (10.0, 8)
    assert TOYS["1"].second_ae_config is None


def test_demo_reads_the_evaluation_headline():
    section = "\n".join([
        "| benchmark | method | metric | rate | 95% CI (Wilson) | n |",
        "| (i) two subjects | plain | missing a subject | 0.400 | [0.320, 0.485] | 128 |",
        "| (i) two subjects | plain | all subjects (shapes) | 0.600 | [0.515, 0.680] | 128 |",
        "| (i) two subjects | A&E official 16x16 | missing a subject | 0.100 | [0.060, 0.160] | 128 |",
        "| (i) two subjects | A&E official 16x16 | all subjects (shapes) | 0.900 | [0.840, 0.940] | 128 |",
        "| (i) two subjects | A&E official 16x16 - plain, all subjects (shapes) | +0.300 | [+0.200, +0.400] | yes |",
        "| (i) two subjects | A&E official 16x16 - plain, missing a subject | -0.300 | [-0.400, -0.200] | yes |",
    ])  # fmt: skip
    text = merge_section("", "2", section)
    lines = evaluation_headline(text, "2")
    assert "128 prompt-seed pairs" in lines[0] and "A&E official 16x16" in lines[0]
    assert "plain 0.60 [0.52, 0.68], A&E official 16x16 0.90 [0.84, 0.94]; change +0.30 [+0.20, +0.40]" in lines[1]
    assert "plain 0.40 [0.32, 0.48]" in lines[2] and "change -0.30 [-0.40, -0.20]" in lines[2]
    assert len(lines) == 3  # one A&E setting in the section: no "also" line
    preset = "A&E toyworld/attend_and_excite 8x8"
    second = section + "\n" + "\n".join([
        f"| (i) two subjects | {preset} | all subjects (shapes) | 0.700 | [0.615, 0.772] | 128 |",
        f"| (i) two subjects | {preset} - plain, all subjects (shapes) | +0.100 | [+0.010, +0.190] | yes |",
    ])  # fmt: skip
    both = evaluation_headline(merge_section("", "2", second), "2")
    assert both[:3] == lines  # the first setting stays the headline
    assert both[3] == f"  also {preset}: all subjects 0.70 [0.61, 0.77]; change +0.10 [+0.01, +0.19]"
    # a section without missing-subject rows (the first toy's): derived as 1 - all subjects, interval flipped
    old = "\n".join(row for row in section.splitlines() if "missing" not in row)
    derived = evaluation_headline(merge_section("", "1", old), "1")
    assert "plain 0.40 [0.32, 0.48], A&E official 16x16 0.10 [0.06, 0.16]; change -0.30 [-0.40, -0.20]" in derived[2]
    assert "no ToyWorld 2 section" in evaluation_headline(merge_section("", "1", old), "2")[0]


def test_demo_summary_counts_each_ae_setting_apart(tmp_path):
    """scripts/toyworld_demo.py on three fake txt2img runs of one two-subject prompt (rendered scenes, so the detector's
    verdict is known): plain and two A&E settings are counted separately, named by softmax scale and map side."""
    import importlib.util
    import json

    from conftest import REPO

    from ldm.toyworld.scenes import SceneSpec, ToyObject, render_scene

    both = SceneSpec((ToyObject("circle", "red", (18, 20), 11), ToyObject("square", "blue", (46, 44), 11)))
    one = SceneSpec((ToyObject("circle", "red", (32, 32), 11),))
    runs = {"plain": ([one, one], None), "official": ([both, one], (100.0, 16)), "preset": ([both, both], (10.0, 8))}
    for name, (scenes, ae) in runs.items():
        run = tmp_path / "a_two_subjects" / name
        (run / "samples").mkdir(parents=True)
        for k, spec in enumerate(scenes):
            render_scene(spec).save(run / "samples" / f"{k:05}.png")
        settings = {"options": {"ae_tokens": "circle,square" if ae else ""}, "prompts": {},
                    "attend_and_excite": {"softmax_scale": ae[0], "attention_res": ae[1]} if ae else None,
                    "extra": {"prompt": "a red circle and a blue square"}}  # fmt: skip
        (run / "settings-0000.json").write_text(json.dumps(settings))
    spec = importlib.util.spec_from_file_location("toyworld_demo", REPO / "scripts" / "toyworld_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main([str(tmp_path)]) == 0
    summary = (tmp_path / "summary.txt").read_text()
    assert "A&E x100 16x16 on 'circle,square'" in summary and "A&E x10 8x8 on 'circle,square'" in summary
    assert "plain 2/2 (1.00), A&E x100 16x16 1/2 (0.50), A&E x10 8x8 0/2 (0.00) images" in summary


# --- the samplers' rows (scripts/evaluate_toyworld.py --sampler_rows) ------------------------------------------------
def _row(sampler: str, steps: int, method: str, hits: int, seconds: float, toy: str = "2"):
    from ldm.toyworld.sampler_bench import SamplerRow

    return SamplerRow(toy=toy, sampler=sampler, steps=steps, method=method, n=100, hits=hits, denoise_rows=2 * steps,
                      guidance_rows=0.0 if method == "plain" else 30.0, seconds=seconds, wall_seconds=seconds,
                      command="c", date="2026-12-03", threads=1)  # fmt: skip


def test_sampler_rows_replace_their_setting_and_check_the_20_step_claim(tmp_path):
    from ldm.toyworld.sampler_bench import merge_rows, section, write_section

    path = tmp_path / "rows.json"
    merge_rows(path, [_row("ddim", 50, "plain", 50, 1.0), _row("ddim", 50, "A&E x", 60, 4.0)])
    rows = merge_rows(path, [_row("dpmpp_2m", 20, "A&E x", 55, 1.6), _row("ddim", 50, "plain", 52, 1.1)])
    assert len(rows) == 3 and [r.hits for r in rows if r.sampler == "ddim" and r.method == "plain"] == [52]
    text = section(rows, "plot.png")
    lo, hi = wilson(60, 100)
    assert f"against DDIM 50's 0.600 [{lo:.3f}, {hi:.3f}] (inside its interval), at 0.40x" in text
    assert "| dpmpp_2m | 20 | A&E x | 0.550 |" in text and "| 40 + 30.0 |" in text
    results = tmp_path / "results.md"
    results.write_text("# ToyWorld results\n\nkept\n")
    write_section(results, text)
    write_section(results, section(rows[:1], "plot.png"))  # a rerun replaces the section only
    body = results.read_text()
    assert body.count("## Samplers") == 1 and "kept" in body and "| dpmpp_2m |" not in body


def test_unet_passes_are_counted_per_row():
    """DDIM 3 steps with CFG: 6 denoising rows per image; A&E adds guidance rows (passes with gradients)."""
    from conftest import _golden_model

    from ldm import inference
    from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig
    from ldm.toyworld.sampler_bench import count_unet_passes

    model = _golden_model("sd")
    ae = AttendExciteConfig(attention_res=8, max_iter_to_alter=2, thresholds={}, schedule_steps=None)
    for spec, guided in (("", 0), ("cat,frog", 2)):
        with inference.sampling_scope(model), count_unet_passes(model.model.diffusion_model) as count:
            inference.sample_prompts(model, inference.make_sampler(model, "dpmpp_2m"), ["a cat and a frog"] * 2,
                                     (4, 8, 8), 3, 5.0, ae_tokens=spec, ae_config=ae)  # fmt: skip
        assert (count.denoise_rows, count.guidance_rows) == (2 * 2 * 3, 2 * guided)
