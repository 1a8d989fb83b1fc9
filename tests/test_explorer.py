"""The explorer's logic without a browser, on the tiny SD model (CLIP tokenizer) with a 3-vector placeholder, and the
ToyWorld tokenizer (BERT, a 29-word vocabulary) for unknown and cut-off words."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, _golden_model, require_fixture
from omegaconf import OmegaConf
from PIL import Image

from ldm import inference
from ldm.explorer import callbacks
from ldm.explorer.chips import prompt_chips, selection_for, spec_for
from ldm.explorer.plot import BAND, PALETTE, run_plot
from ldm.explorer.session import Explorer, Settings
from ldm.guidance.attend_excite.maps import capture_token_maps
from ldm.models.diffusion.guidance.tokens import resolve_ae_tokens
from ldm.modules.embedding_manager import EmbeddingManager
from ldm.util import instantiate_from_config

SD_CONFIG = REPO / "configs" / "tests" / "golden_tiny_sd.yaml"
PROMPT = "a photo of a hedgehogzz and * with a dog"
SETTINGS = Settings(steps=4, scale=3.0, seed=7, H=64, W=64)  # tiny SD: latent 32x32, f = 2
FEW_REFINEMENTS = {"max_refinement_steps": "2"}  # keeps the runs short


def _embeddings(tmp_path: Path, name: str, width: int | None = None, vectors: int = 3) -> Path:
    """A 3-vector ``*`` embeddings file for the tiny SD text encoder (or one of another width)."""
    encoder = _golden_model("sd").cond_stage_model
    manager = EmbeddingManager(encoder, ["*"], ["dog"], num_vectors_per_token=vectors)
    if width is not None:
        manager.string_to_param_dict["*"] = torch.nn.Parameter(torch.randn(vectors, width))
    path = tmp_path / name
    manager.save(path)
    return path


@pytest.fixture(scope="module")
def explorer(tmp_path_factory) -> Explorer:
    require_fixture(GOLDEN_WEIGHTS["sd"])
    torch.manual_seed(0)
    path = _embeddings(tmp_path_factory.mktemp("emb"), "star3.safetensors")
    return Explorer.load(SD_CONFIG, GOLDEN_WEIGHTS["sd"], embedding_path=path, device="cpu")


def test_chips_group_subwords_and_a_multi_vector_placeholder(explorer):
    chips = explorer.chips(PROMPT)
    by_text = {c.text: c for c in chips}
    ids, placeholders = inference.prompt_tokens(explorer.model, PROMPT)
    tok = explorer.model.cond_stage_model.tokenizer
    hedgehog, star, dog = by_text["hedgehogzz"], by_text["*"], by_text["dog"]
    pieces = tok("hedgehogzz", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1 and hedgehog.kind == "sub-words" and len(hedgehog.positions) == len(pieces)
    assert [ids[p] for p in hedgehog.positions] == pieces
    assert star.kind == "placeholder" and len(star.positions) == 3 and star.tokens == ("*",) * 3
    assert star.positions[0] == hedgehog.positions[-1] + 2  # "and" between them
    assert dog.positions == (star.positions[-1] + 3,)  # shifted by the placeholder's 3 vectors ("with", "a")
    # every chip excites what its --ae_tokens item resolves to on the command line's lookup
    for chip in chips:
        assert resolve_ae_tokens([chip.spec], ids, tok, placeholders) == (chip.positions,)
    # a later "a" is a later occurrence: selected by its position
    a_chips = [c for c in chips if c.text == "a"]
    assert len(a_chips) == 3 and [c.spec for c in a_chips] == ["a"] + [str(c.positions[0]) for c in a_chips[1:]]
    # clicking chips -> the --ae_tokens string (prompt order) -> back to the same chips
    picked = [chips.index(dog), chips.index(hedgehog), chips.index(star)]
    spec = spec_for(chips, picked)
    assert spec == "hedgehogzz,*,dog"
    assert selection_for(chips, spec) == sorted(picked)
    assert callbacks.spec_from_chips(explorer, PROMPT, [str(i) for i in picked]) == spec
    view = callbacks.chip_view(explorer, PROMPT, spec)
    assert view.selected == [str(i) for i in sorted(picked)] and len(view.choices) == len(chips)
    labels = dict((value, label) for label, value in view.choices)
    assert "hedgehogzz" in labels[str(chips.index(hedgehog))] and "3 vector(s)" in labels[str(chips.index(star))]


def test_chips_mark_unknown_and_cut_off_words():
    config = OmegaConf.load(REPO / "configs" / "toyworld" / "txt2img-inference.yaml")
    encoder = instantiate_from_config(config.model.params.cond_stage_config)  # max_seq_len 32
    prompt = "a red zebra circle," + " and a blue square" * 10
    ids = encoder.tokenize([prompt])[0].tolist()
    chips = prompt_chips(prompt, ids, encoder.tokenizer)
    zebra = next(c for c in chips if c.text == "zebra")
    assert zebra.kind == "unknown" and zebra.tokens == ("[UNK]",)
    comma = next(c for c in chips if c.text == ",")
    assert comma.spec == str(comma.positions[0])  # a comma cannot be an --ae_tokens word
    cut = [c for c in chips if c.kind == "truncated"]
    kept = [c for c in chips if c.kind != "truncated"]
    assert cut and not any(c.selectable for c in cut) and kept[-1].positions[-1] == 30  # [SEP] at 31
    assert spec_for(chips, range(len(chips))).count(",") == len(kept) - 1


def test_chip_view_names_cut_off_words(explorer):
    prompt = "a dog " + "and a cat " * 30 + "zz"  # CLIP: 77 tokens
    view = callbacks.chip_view(explorer, prompt)
    assert "cut off by the text encoder's 77-token limit" in view.table and view.table.endswith(" zz)")
    assert all("zz" not in label for label, _ in view.choices)


def test_run_gives_both_images_maps_per_word_and_curves(explorer):
    fields = explorer.preset_fields("official") | FEW_REFINEMENTS
    steps = []
    view = callbacks.run(explorer, PROMPT, "*,dog", SETTINGS, "official", fields, 128,
                         progress=lambda f, d: steps.append((f, d)))  # fmt: skip
    result = view.result
    assert result.labels == ["*", "dog"] and result.steps == SETTINGS.steps
    for trace in (result.plain, result.excited):
        assert trace.image.size == (64, 64)
        assert len(trace.maps) == SETTINGS.steps and all(m.shape == (2, 16, 16) for m in trace.maps)
        assert trace.final_maps.shape == (2, 16, 16)
        assert len(trace.loss) == SETTINGS.steps and all(0.0 <= v <= 1.0 for v in trace.loss)
        assert all(len(s) == 2 for s in trace.max_attention)
    # 4 steps: updates at steps < round(25*4/50) = 2, thresholds at round(0, 0.8, 1.6) = 0, 1, 2; none at step 3
    assert result.excited.guided == [True, True, True, False] and not any(result.plain.guided)
    assert not any(result.plain.refinement)
    assert result.refinement_total == sum(result.excited.refinement)
    assert [round(f, 6) for f, _ in steps] == [round((k + 1) / 8, 6) for k in range(8)]
    # the page's pieces
    assert view.plain_image.size == view.excited_image.size == (128, 128)
    assert [c for _, c in view.step.excited_maps][0].startswith("*") and len(view.step.plain_maps) == 2
    assert view.last_step == SETTINGS.steps and view.plot.width > 400
    assert "Refinement iterations:** " + str(result.refinement_total) in view.summary
    assert "--ae_tokens '*,dog'" in result.command and "--embedding_path" in result.command
    first = callbacks.at_step(result, 0, 128)
    assert first.caption.startswith("Step 1/4") and len(first.excited_maps) == 2
    assert callbacks.at_step(result, 99, 128).caption.startswith("Final maps")


def test_run_is_the_scripts_sampling(explorer):
    """Without A&E = sample_prompts without tokens; with A&E = sample_prompts with them (the maps hook changes
    nothing); the step maps' loss at guided steps = the guidance records' loss; the final maps = --save_attention's."""
    config, _ = explorer.ae_config("official", explorer.preset_fields("official") | FEW_REFINEMENTS)
    result = explorer.run(PROMPT, "*,dog", SETTINGS, config)
    model = explorer.model
    used, _ = inference.schedule_for_run(config, "ddim", SETTINGS.steps, model.num_timesteps, log=False)

    def reference(tokens: str):
        generator = torch.Generator().manual_seed(SETTINGS.seed)
        with inference.sampling_scope(model):
            return inference.sample_prompts(model, inference.make_sampler(model, "ddim"), [PROMPT], (4, 32, 32),
                                            SETTINGS.steps, SETTINGS.scale, generator=generator, ae_tokens=tokens,
                                            ae_config=used)  # fmt: skip

    plain, excited = reference(""), reference("*,dog")
    assert list(result.plain.image.getdata()) == list(inference.to_pil(plain.images[0]).getdata())
    assert list(result.excited.image.getdata()) == list(inference.to_pil(excited.images[0]).getdata())
    assert list(result.plain.image.getdata()) != list(result.excited.image.getdata())
    records = {r["step"]: r["groups"][0] for r in excited.guidance.records}
    for step, rec in records.items():
        assert result.excited.loss[step] == pytest.approx(rec["loss"], abs=1e-5)
        assert result.excited.max_attention[step] == pytest.approx(rec["max_att"], abs=1e-5)
        assert result.excited.refinement[step] == rec.get("refinement", {}).get("iterations", 0)
    groups, _, _ = inference.resolve_batch_tokens(model, [PROMPT], "*,dog")
    t = torch.ones(1, dtype=torch.long)
    final = capture_token_maps(model.model.diffusion_model, excited.latents, t, excited.cond, groups, used)
    assert torch.allclose(result.excited.final_maps, final[0], atol=1e-6)


def test_the_shown_command_reproduces_the_run(explorer, tmp_path, monkeypatch):
    """The page's txt2img command, run as it is shown, makes the explorer's image with A&E."""
    import importlib.util
    import shlex

    fields = explorer.preset_fields("official") | FEW_REFINEMENTS
    config, flags = explorer.ae_config("official", fields)
    result = explorer.run(PROMPT, "*,dog", SETTINGS, config, ae_flags=flags)
    argv = shlex.split(result.command)
    assert argv[:2] == ["python", "scripts/stable_txt2img.py"] and "--ae_max_refinement_steps" in argv
    spec = importlib.util.spec_from_file_location("stable_txt2img", REPO / argv[1])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(REPO)
    script.main([*argv[2:], "--outdir", str(tmp_path), "--device", "cpu", "--skip_grid"])
    made = Image.open(tmp_path / "samples" / "00000.png")
    assert list(made.getdata()) == list(result.excited.image.getdata())
    assert (tmp_path / "attention" / "00000.png").is_file()


@pytest.mark.parametrize("sampler", ["plms", "ddpm", "euler_a"])
def test_every_sampler_hands_over_the_maps_of_every_step(explorer, sampler):
    config, _ = explorer.ae_config("official", explorer.preset_fields("official") | FEW_REFINEMENTS)
    settings = dataclasses.replace(SETTINGS, sampler=sampler, steps=3)
    result = explorer.run(PROMPT, "dog", settings, config)
    assert result.steps == 3 and len(result.plain.maps) == 3 and result.labels == ["dog"]
    # 3 steps: updates at steps < round(1.5) = 2, thresholds at round(0, 0.6, 1.2) = 0, 1: step 2 only watches
    assert result.excited.guided == [True, True, False] and result.excited.maps[2].shape == (1, 16, 16)
    assert f"--sampler {sampler}" in result.command


def test_errors_are_the_scripts_messages(explorer, tmp_path):
    fields = explorer.preset_fields("official")
    with pytest.raises(ValueError, match="'cat' .* is not in the prompt. Token table"):
        callbacks.run(explorer, PROMPT, "cat", SETTINGS, "official", fields)
    with pytest.raises(ValueError, match="--H 60 --W 64: the image size must be a positive multiple of 8"):
        callbacks.run(explorer, PROMPT, "dog", dataclasses.replace(SETTINGS, H=60), "official", fields)
    with pytest.raises(ValueError, match="--ae_thresholds"):
        callbacks.run(explorer, PROMPT, "dog", SETTINGS, "official", fields | {"thresholds": "ten"})
    with pytest.raises(ValueError, match="select at least one word"):
        callbacks.run(explorer, PROMPT, " ", SETTINGS, "official", fields)
    for bad in (float("nan"), float("inf"), -float("inf")):  # used to give black images
        with pytest.raises(ValueError, match=r"--scale (nan|inf|-inf): the guidance scale must be a finite number"):
            callbacks.run(explorer, PROMPT, "dog", dataclasses.replace(SETTINGS, scale=bad), "official", fields)
    before = explorer.placeholders()
    wrong = _embeddings(tmp_path, "wide.pt", width=48, vectors=1)
    with pytest.raises(ValueError, match="48") as err:
        callbacks.load_embedding(explorer, str(wrong))
    assert str(wrong) in str(err.value)
    assert explorer.placeholders() == before and len(explorer.chips("a *")[-1].positions) == 3  # still loaded


def test_preset_fields_and_overrides(explorer):
    toy = explorer.preset_fields("ToyWorld")
    assert toy["softmax_scale"] == "10.0" and toy["attention_res"] == "8"
    assert explorer.preset_fields("earlier fork")["schedule_steps"] == "none"
    config, flags = explorer.ae_config("ToyWorld", toy | {"max_refinement_steps": "3"})
    assert config.max_refinement_steps == 3 and config.softmax_scale == 10.0 and config.attention_res == 8
    assert flags == ["--ae_max_refinement_steps", "3"]


def test_plot_draws_each_series_and_the_refinement_band():
    image = run_plot(["cat", "dog"], [0.9, 0.5, 0.4], [0.9, 0.3, 0.1], [[0.1, 0.2]] * 3, [[0.3, 0.6]] * 3, [0, 5, 0])
    colors = {c for _, c in image.getcolors(1 << 20)}
    for hex_color in PALETTE[:2] + [BAND]:
        assert Image.new("RGB", (1, 1), hex_color).getpixel((0, 0)) in colors
    plain = run_plot(["cat"], [0.9], [0.9], [[0.1]], [[0.2]], [0])
    assert Image.new("RGB", (1, 1), BAND).getpixel((0, 0)) not in {c for _, c in plain.getcolors(1 << 20)}


def test_toyworld2_opens_with_its_own_steps_and_scale(tmp_path):
    """The page's defaults come from the loaded model's description, not from one config path (issue #24: ToyWorld 2
    used to open with 50 steps and scale 7.5): ToyWorld 2 opens with 25 steps, scale 3, 64 px and the official A&E
    preset, also from a copy of its config elsewhere; the same model without the config's ``toyworld: 2`` is an
    ordinary SD 1 model (50 steps, scale 7.5)."""
    from ldm.models.description import describe_config

    config = REPO / "configs" / "toyworld2" / "txt2img-inference.yaml"
    ckpt = require_fixture(REPO / "models" / "toyworld2" / "txt2img.safetensors")
    copy = tmp_path / "my-toy.yaml"
    copy.write_text(config.read_text())
    toy = Explorer.load(copy, ckpt, device="cpu").default_settings(seed=3)
    assert (toy.steps, toy.scale, toy.H, toy.W, toy.seed) == (25, 3.0, 64, 64, 3)
    assert describe_config(copy).defaults.ae_preset == "guidance/attend_and_excite.yaml"  # scripts/explore.py's pick

    untagged = OmegaConf.load(config)
    del untagged["toyworld"]
    OmegaConf.save(untagged, tmp_path / "untagged.yaml")
    plain = Explorer.load(tmp_path / "untagged.yaml", ckpt, device="cpu").default_settings()
    assert (plain.steps, plain.scale, plain.H) == (50, 7.5, 64)


def test_methods_side_by_side_on_the_same_seed(explorer, word_max):
    """The picked method (A&E) and a second one ticked: one run without guidance, one per method, each the same as
    that method's own run from the seed; galleries, plot and summary show every run."""
    fields = explorer.preset_fields("official") | FEW_REFINEMENTS
    assert "word_max" in explorer.methods()
    steps = []
    view = callbacks.run(explorer, PROMPT, "*,dog", SETTINGS, "official", fields, 128,
                         progress=lambda f, d: steps.append(f), method="ae", others=["word_max", "ae"],
                         method_fields={"word_max": {"word_step": "80", "attention_res": "16",
                                                     "max_iter_to_alter": "2"}})  # fmt: skip
    comparison = view.comparison
    assert [r.method for r in comparison.runs] == ["ae", "word_max"]  # the picked method first, each once
    alone = callbacks.run(explorer, PROMPT, "*,dog", SETTINGS, "official", fields, 128)
    assert list(view.plain_image.getdata()) == list(alone.plain_image.getdata())  # the main pair is unchanged
    assert list(view.excited_image.getdata()) == list(alone.excited_image.getdata())
    config, flags = explorer.method_config("word_max", {"word_step": "80", "attention_res": "16",
                                                        "max_iter_to_alter": "2"})  # fmt: skip
    own = explorer.run(PROMPT, "*,dog", SETTINGS, config, ae_flags=flags, method="word_max")
    second = comparison.runs[1]
    assert list(second.trace.image.getdata()) == list(own.excited.image.getdata())  # the same seed and settings
    assert second.trace.method_loss == own.excited.method_loss and "--g_word_step 80" in second.command
    assert list(second.trace.image.getdata()) != list(comparison.plain.image.getdata())
    # cost: a CFG step is 2 samples through the UNet; A&E adds its guidance passes
    for trace in (comparison.plain, *(r.trace for r in comparison.runs)):
        assert trace.unet_evaluations >= 2 * SETTINGS.steps and trace.seconds > 0
    assert comparison.runs[0].trace.unet_evaluations > comparison.plain.unet_evaluations
    assert steps == sorted(steps) and steps[-1] == pytest.approx(1.0)
    # the page's side-by-side pieces: every run's image, every run's map per word, one plot, one summary
    assert [c.split(":")[0] for _, c in view.compare_images] == ["without guidance", "Attend-and-Excite", "Word max"]
    assert len(view.compare_maps) == 3 * 2 and view.compare_maps[5][1].startswith("Word max: dog")
    assert view.compare_plot.width > 400
    assert view.compare_summary.count("| Word max |") == 1 and "--guidance word_max" in view.compare_summary


def test_methods_plot_draws_each_run_and_skips_steps_without_a_loss():
    from ldm.explorer.plot import methods_plot

    image = methods_plot(["without", "A", "B"], [[0.9, 0.5], [0.9, 0.3], [0.8, 0.2]], [[None, None], [2.0, None],
                                                                                         [0.5, 0.4]])  # fmt: skip
    colors = {c for _, c in image.getcolors(1 << 20)}
    for hex_color in PALETTE[:2]:
        assert Image.new("RGB", (1, 1), hex_color).getpixel((0, 0)) in colors
