"""The two learned words of ToyWorld ("*" the held-out star, "@" a yellow diamond) through both toys' tokenizers, the
detector's verdicts and the prompt families; the methods table (ldm/toyworld/methods_table.py) against independent
computations; and scripts/evaluate_toyworld.py --methods end to end on the first toy with tiny counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO

from ldm.guidance.tokens import end_position
from ldm.toyworld.concepts import WORDS, WORDS_FILES
from ldm.toyworld.detect import parse_caption
from ldm.toyworld.methods import GENEVAL_METRIC, MethodsResult, ToyMethod
from ldm.toyworld.methods_table import method_verdicts, methods_table, verdict_lines
from ldm.toyworld.prompts import colour_and_shape_specs, placeholder_prompts
from ldm.toyworld.sampling import PLACEHOLDERS, judge
from ldm.toyworld.scenes import SceneSpec, ToyObject, heldout_specs, image_to_array, render_scene
from ldm.toyworld.stats import bootstrap_diff, bootstrap_diff_of_means


def _image(*objects: ToyObject) -> torch.Tensor:
    arr = image_to_array(render_scene(SceneSpec(tuple(objects))))  # [H, W, 3] in [-1, 1]
    return torch.from_numpy((arr + 1) / 2).permute(2, 0, 1)


@pytest.mark.parametrize("toy", ["1", "2"])
def test_both_words_are_one_token_of_each_toy_and_the_shipped_file_holds_both(toy):
    from ldm.inference import load_model
    from ldm.toyworld.benchmarks import TOYS

    model = load_model(TOYS[toy].config, TOYS[toy].ckpt, WORDS_FILES[toy], "cpu")
    encoder, manager = model.cond_stage_model, model.embedding_manager
    assert set(manager.string_to_token_dict) == {"*", "@"}
    ids = encoder.tokenize(["a * and a @"])[0].tolist()
    star, at = (int(manager.string_to_token_dict[w]) for w in ("*", "@"))
    assert star != at and ids.count(star) == 1 and ids.count(at) == 1  # each one token, in the prompt's order
    end = end_position(ids, encoder.tokenizer)  # the prompt is [start] a * and a @ [end]: 5 words, none unknown
    assert end == 6 and ids.index(star) == 2 and ids.index(at) == 5 and encoder.tokenizer.unk_token_id not in ids[1:end]
    for word in ("*", "@"):
        assert manager.string_to_param_dict[word].shape == (2, 128)  # 2 vectors of width 128 (finetune.yaml)
    with torch.no_grad():
        a, b = (encoder.encode([p], embedding_manager=manager) for p in ("a * and a @", "a @ and a *"))
    assert not torch.allclose(a, b)  # the two words are different vectors


def test_the_detector_judges_at_as_a_yellow_diamond():
    assert PLACEHOLDERS["@"] == ("yellow", "diamond") and WORDS["@"].meaning == ("yellow", "diamond")
    assert parse_caption("a * and a @", PLACEHOLDERS) == [(None, "star"), ("yellow", "diamond")]
    assert parse_caption("a red @", PLACEHOLDERS) == [("yellow", "diamond")]  # the word's own colour
    star = ToyObject("star", "blue", (18, 32), 11)
    yellow_diamond, red_diamond = (ToyObject("diamond", c, (46, 32), 10) for c in ("yellow", "red"))
    verdicts = judge(torch.stack([_image(star, yellow_diamond), _image(star, red_diamond), _image(yellow_diamond)]),
                     ["a * and a @"] * 3)  # fmt: skip
    assert [(v.shapes_present, v.all_correct) for v in verdicts] == [(True, True), (True, False), (False, False)]


def test_at_prompts_never_name_the_words_own_concept_and_specs_name_it():
    prompts, specs = placeholder_prompts(200, 5, "@", ("yellow", "diamond"))
    assert "a @ and a yellow diamond" not in prompts and all(s.startswith("@,") for s in specs)
    assert any("red diamond" in p for p in prompts) and any("yellow circle" in p for p in prompts)
    assert placeholder_prompts(6, 2) == placeholder_prompts(6, 2, "*")  # "*"'s prompts as before
    assert colour_and_shape_specs(["a @ and a red circle"]) == ["@,red,circle"]


def test_the_pictures_of_at_are_yellow_diamonds():
    from PIL import Image

    files = sorted((REPO / "data" / "toyworld" / "yellow_diamond").glob("*.png"))
    specs = heldout_specs(5, "diamond", seed=1, colour="yellow")
    assert len(files) == 5 and all(s.objects[0].colour == "yellow" for s in specs)
    for path, spec in zip(files, specs, strict=True):  # the files are the scene code's renders
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(render_scene(spec)))


def _result() -> tuple[MethodsResult, list[ToyMethod]]:
    rng = np.random.default_rng(4)
    result = MethodsResult()
    methods = [ToyMethod("good", "Good", None, "x"), ToyMethod("bad", "Bad", None, "y")]
    for bench in ("GenEval: single object", "GenEval: colours"):
        plain = rng.random(80) < 0.4
        result.hits[(bench, GENEVAL_METRIC)] = {"plain": plain, "Good": plain | (rng.random(80) < 0.5),
                                                "Bad": plain & (rng.random(80) < 0.9)}  # fmt: skip
        result.images[bench] = 80
    plain = rng.random(60) < 0.5
    result.hits[("(iv) a * and a @", "all subjects present")] = {
        "plain": plain,
        "Good": plain,
        "Bad": np.zeros(60, bool),
    }
    result.images["(iv) a * and a @"] = 60
    result.unaskable["GenEval: counting"] = ["two", "three"]
    for bench in result.images:
        result.seconds[bench] = {"plain": 1.0, "Good": 2.0, "Bad": 4.0}
        result.evaluations[bench] = {"plain": 50, "Good": 100, "Bad": 150}
    result.evaluations["(iv) a * and a @"]["Good"] = 50  # as many UNet passes as plain: it never guided there
    return result, methods


def test_methods_table_cells_overall_and_verdicts():
    result, methods = _result()
    lines = methods_table(result, methods)
    text = "\n".join(lines)
    single = result.hits[("GenEval: single object", GENEVAL_METRIC)]
    mean, lo, hi = bootstrap_diff(single["plain"], single["Good"])
    assert f"{single['Good'].mean():.2f} ({mean:+.2f} [{lo:+.2f}, {hi:+.2f}])" in text
    assert "| GenEval: counting | not asked: the toy's captions have no `two`, `three` |" in text
    tasks = [k for k in result.hits if k[1] == GENEVAL_METRIC]
    overall = np.mean([result.hits[k]["Bad"].mean() for k in tasks])
    effect = bootstrap_diff_of_means([result.hits[k]["plain"] for k in tasks], [result.hits[k]["Bad"] for k in tasks])
    row = next(line for line in lines if line.startswith("| GenEval: overall"))
    assert f"{overall:.2f} ({effect[0]:+.2f} [{effect[1]:+.2f}, {effect[2]:+.2f}])" in row and "mean of the 2" in row
    order = [line.split(" | ")[0] for line in lines[2:6]]
    assert order == ["| GenEval: single object", "| GenEval: counting", "| GenEval: colours", "| GenEval: overall "
                     "(mean over the tasks asked)"]  # fmt: skip
    assert "| all benchmarks | time per image (x plain) | 1.00 s | 2.00x | 4.00x |" in text
    assert "| all benchmarks | UNet evaluations per image | 50 | 86 | 150 |" in text  # (2 x 80 x 100 + 60 x 50) / 220
    row = next(line for line in lines if line.startswith("| (iv) a * and a @"))
    assert row.count("(did not act)") == 1 and "(+0.00 [+0.00, +0.00]) (did not act)" in row
    helps, hurts = method_verdicts(result, methods)["Bad"]
    assert helps == [] and "(iv) a * and a @: all subjects present" in hurts
    assert method_verdicts(result, methods)["Good"][0] == ["GenEval: single object", "GenEval: colours"]
    said = "\n".join(verdict_lines(result, methods))
    assert "**Bad does not help on this toy**" in said and "Good helps on GenEval: single object" in said
    assert "it did not act on (iv) a * and a @" in said


def test_stratified_interval_of_the_mean_over_tasks():
    same = [np.ones(10, bool), np.zeros(30, bool)]
    assert bootstrap_diff_of_means(same, same) == (0.0, 0.0, 0.0)
    up = [np.zeros(10, bool), np.zeros(30, bool)]
    assert bootstrap_diff_of_means(up, [np.ones(10, bool), np.zeros(30, bool)]) == (0.5, 0.5, 0.5)  # not 10/40
    rng = np.random.default_rng(0)
    a, b = [rng.random(400) < 0.3, rng.random(200) < 0.6], [rng.random(400) < 0.5, rng.random(200) < 0.6]
    mean, lo, hi = bootstrap_diff_of_means(a, b, n_boot=4000)
    d = [y.astype(float) - x.astype(float) for x, y in zip(a, b)]
    se = np.sqrt(sum(v.var(ddof=1) / len(v) for v in d)) / 2  # the normal approximation of the mean of two means
    assert mean == pytest.approx(np.mean([v.mean() for v in d]))
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.015) and hi == pytest.approx(mean + 1.96 * se, abs=0.015)


@pytest.mark.slow
def test_methods_comparison_end_to_end(tmp_path):
    """scripts/evaluate_toyworld.py --methods plain,ae on the first toy, one pair per benchmark, 3 steps: every row of
    the table, the not-asked GenEval tasks with their words, the learned-word rows from the shipped file."""
    from test_txt2img_scripts import load_script

    results = tmp_path / "results.md"
    script = load_script("evaluate_toyworld")
    assert script.main(["--toy", "1", "--methods", "plain,ae", "--n_pairs", "1", "--n_three", "1", "--n_inversion",
                        "1", "--n_geneval", "1", "--steps", "3", "--results", str(results), "--outdir",
                        str(tmp_path / "out")]) == 0  # fmt: skip
    text = results.read_text()
    assert "<!-- toyworld1 methods: begin -->" in text and "models/toyworld/learned_words.safetensors" in text
    for row in (
        "GenEval: single object",
        "GenEval: two objects",
        "GenEval: colours",
        "GenEval: colour attribution",
        "GenEval: overall",
        "(i) two subjects",
        "(i') three subjects",
        "(iii) a * and a {colour} {shape}",
        "(iv) a * and a @",
        "(v) a @ and a {colour} {shape}",
        "time per image",
        "UNet evaluations per image",
    ):
        assert f"| {row}" in text, row  # fmt: skip
    assert "| GenEval: counting | not asked: the toy's captions have no `circles`" in text
    assert "| GenEval: position | not asked: the toy's captions have no `above`, `below`, `left`, `right`" in text
    assert "Attend-and-Excite" in text and ("does not help on this toy" in text or "helps on" in text)
    assert len(list((tmp_path / "out").glob("methods_iv_a_and_a_*.png"))) == 2  # plain's and A&E's grids
