"""Tests of ldm/evaluation and the evaluation scripts on a tiny random CLIP built here (no download)."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import kornia
import numpy as np
import pytest
import torch
from conftest import GOLDEN_WEIGHTS, require_fixture
from PIL import Image

from ldm import inference
from ldm.evaluation import metrics
from ldm.evaluation.clip import CLIP_MEAN, CLIP_STD, CLIPFeatureExtractor, preprocess_images, resolve_clip_folder
from ldm.evaluation.evaluators import collect_prompt_images, read_prompt_file, strip_placeholder

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32  # tiny CLIP's vision input


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- tiny CLIP


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (printable bytes map to themselves, the rest to 256+)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _write_tokenizer(folder: Path) -> int:
    """vocab.json + merges.txt of a tiny CLIP BPE where "cat" and "dog" are one token each; returns the vocab size."""
    chars = _byte_symbols()
    vocab = chars + [c + "</w>" for c in chars] + ["ca", "cat</w>", "do", "dog</w>"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    return len(vocab)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    vocab_size = _write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    bos, eos = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**small, "vocab_size": vocab_size, "max_position_embeddings": 77,
                     "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
        vision_config={**small, "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def extractor(clip_dir) -> CLIPFeatureExtractor:
    return CLIPFeatureExtractor.from_pretrained(clip_dir, batch_size=3)


def direct_preprocess(x01: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP preprocessing written directly with kornia (for inputs whose crop offsets are whole pixels)."""
    x = kornia.geometry.transform.resize(x01, size, interpolation="bicubic", side="short").clamp(0, 1)
    x = kornia.geometry.transform.center_crop(x, (size, size), mode="nearest")
    return kornia.enhance.normalize(x, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))


def np_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.sqrt(np.dot(a, a)) * np.sqrt(np.dot(b, b))))


def np_template_average(rows: np.ndarray) -> np.ndarray:
    acc = np.zeros(rows.shape[1])
    for r in rows:
        acc += r / np.sqrt((r * r).sum())
    acc /= len(rows)
    return acc / np.sqrt((acc * acc).sum())


def write_png(path: Path, rng: np.random.Generator, h: int = 40, w: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@functools.lru_cache(maxsize=1)
def hf_clip(clip_dir: Path):
    """The tiny CLIP straight from transformers (loaded once)."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()


def reference_image_features(clip_dir: Path, files: list[Path]) -> np.ndarray:
    """Features straight from transformers on directly preprocessed images."""
    model = hf_clip(clip_dir)
    rows = []
    for f in files:
        x = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            out = model.get_image_features(pixel_values=direct_preprocess(x, IMAGE_SIZE))
        rows.append(getattr(out, "pooler_output", out)[0].double().numpy())
    return np.stack(rows)


def reference_text_features(clip_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import CLIPTokenizer

    model = hf_clip(clip_dir)
    tok = CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
    rows = []
    for t in texts:  # one at a time: no padding involved
        with torch.no_grad():
            out = model.get_text_features(input_ids=torch.tensor([tok(t)["input_ids"]]))
        rows.append(getattr(out, "pooler_output", out)[0].double().numpy())
    return np.stack(rows)


def check_ae_scores(clip_dir, got: dict, files: list[Path], prompt: str, parts, templates: list[str]) -> None:
    """``got`` (one prompt's entry of clip_raw_metrics.json) against the A&E metrics recomputed from ``files``."""

    def text_emb(text: str) -> np.ndarray:
        return np_template_average(reference_text_features(clip_dir, [t.format(text) for t in templates]))

    img = reference_image_features(clip_dir, files)
    text_emb = functools.cache(text_emb)
    full = [np_cos(i, text_emb(prompt)) for i in img]
    mins = [min(np_cos(i, text_emb(part)) for part in parts) for i in img]
    assert got["full_text"] == pytest.approx(np.mean(full), abs=1e-5)
    assert got["min_object"] == pytest.approx(np.mean(mins), abs=1e-5)
    assert got["n_images"] == len(files)


# ---------------------------------------------------------------- metrics


def test_image_image_similarity_matches_loops():
    gen, src = torch.randn(5, 7), torch.randn(3, 7)
    g, s = gen.double().numpy(), src.double().numpy()
    expected = sum(np_cos(a, b) for a in g for b in s) / (5 * 3)
    assert metrics.image_image_similarity(gen, src) == pytest.approx(expected, abs=1e-12)
    assert metrics.image_image_similarity(gen * 4.0, src) == pytest.approx(expected, abs=1e-12)  # scale-free


def test_text_image_similarity_matches_loops():
    text, imgs = torch.randn(7), torch.randn(4, 7)
    expected = np.mean([np_cos(text.double().numpy(), i) for i in imgs.double().numpy()])
    assert metrics.text_image_similarity(text, imgs) == pytest.approx(expected, abs=1e-12)
    assert metrics.text_image_similarity(text[None], imgs) == pytest.approx(expected, abs=1e-12)


def test_template_average_hand_made():
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    # normalised rows (0.6, 0.8) and (0, 1) -> mean (0.3, 0.9) -> renormalised
    expected = np.array([0.3, 0.9]) / math.sqrt(0.3**2 + 0.9**2)
    np.testing.assert_allclose(metrics.template_average(feats).numpy(), expected, atol=1e-12)
    # averaging before normalising would give (1.5, 3)/|.| instead: the per-template normalisation matters
    assert not np.allclose(expected, np.array([1.5, 3.0]) / math.hypot(1.5, 3.0), atol=1e-3)
    rows = torch.randn(80, 9)
    np.testing.assert_allclose(
        metrics.template_average(rows).numpy(), np_template_average(rows.double().numpy()), atol=1e-12
    )


def test_format_templates_is_literal():
    assert metrics.format_templates("a cat", ["a photo of a {}.", "{} art"]) == ["a photo of a a cat.", "a cat art"]


@pytest.mark.parametrize(
    ("prompt", "parts"),
    [
        ("a cat and a dog", ["a cat", "a dog"]),
        ("a cat with a crown", ["a cat", "a crown"]),
        ("a red car and a blue bowl", ["a red car", "a blue bowl"]),
        ("a cat with a crown and a dog", ["a cat with a crown", "a dog"]),  # " and " wins
        ("a cat and a dog and a frog", ["a cat", "a dog", "a frog"]),  # several: all parts
        ("a sandwich", None),  # "and" inside a word is no separator
        ("a photo of a cat", None),  # neither: skipped like the reference
        ("a cat and ", None),  # empty part
    ],
)
def test_split_prompt(prompt, parts):
    assert metrics.split_prompt(prompt) == parts


def test_min_object_similarity_hand_made():
    table = torch.tensor([[0.2, 0.5, -0.1], [0.3, 0.1, 0.4]])  # [parts, images]
    assert metrics.min_object_similarity(table) == pytest.approx((0.2 + 0.1 - 0.1) / 3, abs=1e-7)
    with pytest.raises(ValueError, match="parts, images"):
        metrics.min_object_similarity(torch.zeros(0, 3))


def test_empty_features_are_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        metrics.image_image_similarity(torch.zeros(0, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.image_image_similarity(torch.randn(2, 4), torch.randn(2, 5))


def test_strip_placeholder():
    assert strip_placeholder("a photo of *") == "a photo of"
    assert strip_placeholder("* on the beach, *") == "on the beach,"


# ---------------------------------------------------------------- data files


def test_imagenet_templates_file():
    templates = metrics.load_templates()
    assert len(templates) == 80 and len(set(templates)) == 80
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    assert "itap of my {}." in templates and "a {} in a video game." in templates


def test_prompt_file_is_the_generator_output():
    gen = load_script("make_attend_excite_prompts")
    text = metrics.PROMPTS_FILE.read_text(encoding="utf-8")
    assert text == gen.render(gen.DEFAULT_SEED)
    assert "RECONSTRUCTION" in text.splitlines()[0]
    assert gen.render(1) != text  # colours really depend on the seed


def test_prompt_set_structure():
    gen = load_script("make_attend_excite_prompts")
    pairs = read_prompt_file(metrics.PROMPTS_FILE)
    by_cat: dict[str, list[str]] = {}
    for cat, prompt in pairs:
        by_cat.setdefault(cat, []).append(prompt)
    assert {k: len(v) for k, v in by_cat.items()} == {"animal-animal": 66, "animal-object": 144, "object-object": 66}
    assert all(len(metrics.split_prompt(p) or []) == 2 for _, p in pairs)
    assert "a cat and a dog" in by_cat["animal-animal"]
    for prompt in by_cat["animal-object"]:
        animal_part, obj_part = metrics.split_prompt(prompt)
        obj = obj_part.split()[-1]
        assert animal_part.split()[-1] in gen.ANIMALS and obj in gen.OBJECTS
        if obj in gen.WEARABLES:
            assert prompt == f"{animal_part} with a {obj}"
        else:
            assert " and " in prompt and obj_part.split()[1] in gen.COLOURS
    for prompt in by_cat["object-object"]:
        (_, c1, _), (_, c2, _) = (p.split() for p in metrics.split_prompt(prompt))
        assert c1 in gen.COLOURS and c2 in gen.COLOURS and c1 != c2


def test_read_prompt_file_errors(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat and a dog\nx\ta frog with a crown\n")
    assert read_prompt_file(f) == [("all", "a cat and a dog"), ("x", "a frog with a crown")]
    f.write_text("a cat and a dog\na cat and a dog\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_prompt_file(f)
    with pytest.raises(FileNotFoundError, match="--prompts"):
        read_prompt_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------- preprocessing


def test_preprocess_matches_direct_kornia():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 48)  # short side 40 -> 32x38 after resize; crop offsets 0 and 3
    out = preprocess_images(x, 32)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, direct_preprocess(x, 32), atol=1e-5, rtol=0)
    # un-normalised values lie in [0, 1]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    unnorm = out * std + mean
    assert unnorm.min() >= -1e-6 and unnorm.max() <= 1 + 1e-6


def test_preprocess_input_ranges():
    torch.manual_seed(1)
    x01 = torch.rand(1, 3, 36, 36)
    torch.testing.assert_close(
        preprocess_images(x01 * 2 - 1, 32, input_range=(-1.0, 1.0)), preprocess_images(x01, 32), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="input range"):
        preprocess_images(x01 * 2 - 1, 32)  # [-1, 1] images declared as [0, 1]
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        preprocess_images(torch.rand(3, 36, 36), 32)


def test_preprocess_centre_crop_rounds_like_clip():
    x = torch.arange(32 * 35, dtype=torch.float32).view(1, 1, 32, 35).repeat(1, 3, 1, 1) / (32 * 35)
    out = preprocess_images(x, 32, mean=(0, 0, 0), std=(1, 1, 1))
    # no resize (short side already 32); offset round((35 - 32) / 2) = 2
    torch.testing.assert_close(out, x[..., :, 2:34], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- CLIP loading and features


def test_missing_model_errors(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError, match="--clip_model .*no such folder"):
        resolve_clip_folder(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(clip_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="--clip_model .*no weights"):
        resolve_clip_folder(broken)
    shutil.copy(clip_dir / "model.safetensors", broken)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="--clip_model .*tokenizer"):
        resolve_clip_folder(broken)
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="--clip_model .*config.json"):
        resolve_clip_folder(broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="not a CLIP model"):
        resolve_clip_folder(broken)


def test_hub_cache_snapshot_is_resolved(tmp_path, clip_dir):
    snap = tmp_path / "models--x--clip" / "snapshots" / "abc123"
    shutil.copytree(clip_dir, snap)
    assert resolve_clip_folder(tmp_path / "models--x--clip") == snap


def test_extractor_features_match_transformers(tmp_path, clip_dir, extractor):
    assert extractor.image_size == IMAGE_SIZE  # read from the model config, not 224
    rng = np.random.default_rng(0)
    files = [tmp_path / f"{i}.png" for i in range(4)]
    for f in files:
        write_png(f, rng)
    from ldm.evaluation.images import load_images

    feats = extractor.encode_images(load_images(files))  # batch_size 3 -> two batches
    np.testing.assert_allclose(feats.double().numpy(), reference_image_features(clip_dir, files), atol=1e-5)
    texts = ["a cat", "a dog and a cat", "a photo of a a cat."]  # padded together inside encode_texts
    np.testing.assert_allclose(
        extractor.encode_texts(texts).double().numpy(), reference_text_features(clip_dir, texts), atol=1e-5
    )


def text_model(vocab_file: Path | None = None, merges_file: Path | None = None, vocab_size: int = 49408):
    """A model with just a (tiny) CLIP text encoder: what ``inference.resolve_batch_tokens`` reads of a model."""
    from ldm.modules.encoders.modules import FrozenCLIPEmbedder

    sizes = {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}
    encoder = FrozenCLIPEmbedder(vocab_file=vocab_file, merges_file=merges_file, vocab_size=vocab_size, **sizes)
    return SimpleNamespace(cond_stage_model=encoder)


def object_positions(model, prompt: str, spec: str | None = None) -> tuple[tuple[int, ...], ...]:
    """The positions A&E excites in ``prompt`` during the evaluation: its object words through the shared lookup."""
    script = load_script("evaluate_attend_excite")
    spec = spec or script.ae_spec(SimpleNamespace(ae_tokens=""), prompt)
    (groups,), _, _ = inference.resolve_batch_tokens(model, [prompt], spec)
    return groups


def test_object_word_positions(clip_dir, extractor, caplog):
    model = text_model(clip_dir / "vocab.json", clip_dir / "merges.txt", len(extractor.tokenizer))
    tok = model.cond_stage_model.tokenizer
    # <bos> a cat a n d a dog <eos>: cat at 2, dog at 7 ("and" is three byte tokens in the tiny vocab)
    assert tok.convert_ids_to_tokens(tok("a cat and a dog")["input_ids"])[7] == "dog</w>"
    assert load_script("evaluate_attend_excite").ae_spec(SimpleNamespace(ae_tokens=""), "a cat with a crown") == (
        "cat,crown"
    )
    assert object_positions(model, "a cat and a dog") == ((2,), (7,))
    assert object_positions(model, "a dog and a cat") == ((2,), (7,))
    # a repeated word: its first occurrence (the shared rule); positions pick the other, and the script warns
    assert object_positions(model, "a cat and a cat") == ((2,), (2,))
    assert object_positions(model, "a cat and a cat", "2,7") == ((2,), (7,))
    script = load_script("evaluate_attend_excite")
    script.check_tokens(model, SimpleNamespace(ae_tokens=""), [("x", "a cat and a cat")])
    assert "occurs twice" in caplog.text
    with pytest.raises(ValueError, match="'frog'.*not in the prompt.*Token table"):
        object_positions(model, "a cat and a dog", "cat,frog")


def test_object_word_positions_with_project_clip_bpe():
    """On the real CLIP BPE, "a cat and a dog" gives the indices of A&E's own example (--token_indices [2,5])."""
    folder = REPO / "ldm" / "modules" / "encoders" / "tokenizer_files" / "clip"
    if not (folder / "vocab.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{folder} is missing")
        pytest.skip(f"{folder} is missing")
    model = text_model()
    assert object_positions(model, "a cat and a dog") == ((2,), (5,))
    assert object_positions(model, "a cat with a crown") == ((2,), (5,))
    assert object_positions(model, "a red car and a blue bowl") == ((3,), (7,))


# ---------------------------------------------------------------- scripts


def test_evaluate_attend_excite_on_folders(tmp_path, clip_dir):
    script = load_script("evaluate_attend_excite")
    rng = np.random.default_rng(1)
    prompts = {"a cat and a dog": "animal-animal", "a dog with a cat": "animal-object", "a cat": "single"}
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("".join(f"{c}\t{p}\n" for p, c in prompts.items()))
    tfile = tmp_path / "templates.txt"
    tfile.write_text("a photo of {}.\n{}\nart of a {}.\n")
    files = {p: [tmp_path / "imgs" / p / f"{i:04}.png" for i in range(2 + k)] for k, p in enumerate(prompts)}
    for fs in files.values():
        for i, f in enumerate(fs):
            write_png(f, rng, *((40, 48) if i % 2 else (36, 33)))  # mixed sizes in one folder

    out = script.main(
        ["--prompts", str(pfile), "--templates", str(tfile), "--images_dir", str(tmp_path / "imgs"),
         "--clip_model", str(clip_dir), "--out_dir", str(tmp_path / "out"), "--device", "cpu"]
    )  # fmt: skip

    templates = ["a photo of {}.", "{}", "art of a {}."]
    raw = out["raw"]["imgs"]
    assert raw["skipped"] == ["a cat"]  # no separator
    for prompt, parts in {"a cat and a dog": ("a cat", "a dog"), "a dog with a cat": ("a dog", "a cat")}.items():
        check_ae_scores(clip_dir, raw["prompts"][prompt], files[prompt], prompt, parts, templates)

    agg = out["aggregated"]["imgs"]
    assert agg["all"]["n_prompts"] == 2
    assert agg["all"]["full_text"] == pytest.approx(
        (raw["prompts"]["a cat and a dog"]["full_text"] + raw["prompts"]["a dog with a cat"]["full_text"]) / 2
    )
    saved = json.loads((tmp_path / "out" / "clip_aggregated_metrics.json").read_text())
    assert saved["methods"]["imgs"]["animal-animal"]["min_object"] == pytest.approx(
        raw["prompts"]["a cat and a dog"]["min_object"]
    )
    table = (tmp_path / "out" / "clip_metrics.md").read_text()
    assert "| imgs | all | 2 | 5 |" in table and "| imgs | animal-object | 1 | 3 |" in table


def test_image_folder_layout_errors(tmp_path):
    rng = np.random.default_rng(2)
    flat = tmp_path / "flat"
    write_png(flat / "0.png", rng)
    with pytest.raises(FileNotFoundError, match="wrong layout, found 1 images directly"):
        collect_prompt_images(flat, ["a cat and a dog"])
    nested = tmp_path / "nested"
    write_png(nested / "a cat and a dog" / "0.png", rng)
    (nested / "a frog and a dog").mkdir()
    with pytest.raises(FileNotFoundError, match="a frog and a dog' has no images.*<images_dir>/<prompt>"):
        collect_prompt_images(nested, ["a cat and a dog", "a frog and a dog"])
    with pytest.raises(FileNotFoundError, match="a bird and a dog' is missing"):
        collect_prompt_images(nested, ["a bird and a dog"])
    found = collect_prompt_images(nested, ["a cat and a dog", "a bird and a dog"], skip_missing=True)
    assert list(found) == ["a cat and a dog"]
    with pytest.raises(FileNotFoundError, match="--images_dir .*no such folder"):
        collect_prompt_images(tmp_path / "none", ["a cat and a dog"])


def test_evaluate_model_on_folders(tmp_path, clip_dir):
    script = load_script("evaluate_model")
    rng = np.random.default_rng(3)
    gen = [tmp_path / "gen" / f"{i}.png" for i in range(3)]
    src = [tmp_path / "src" / f"{i}.jpg" for i in range(2)]
    for f in gen + src:
        write_png(f, rng)
    args = ["--prompt", "a photo of *", "--data_dir", str(tmp_path / "src"), "--gen_dir", str(tmp_path / "gen"),
            "--clip_model", str(clip_dir), "--out_dir", str(tmp_path / "out"),
            "--data_size", "0", "--device", "cpu"]  # fmt: skip
    result = script.main(args)
    g, s = reference_image_features(clip_dir, gen), reference_image_features(clip_dir, src)
    t = reference_text_features(clip_dir, ["a photo of"])[0]
    assert result["text"] == "a photo of"
    assert result["image_similarity"] == pytest.approx(np.mean([np_cos(a, b) for a in g for b in s]), abs=1e-5)
    assert result["text_similarity"] == pytest.approx(np.mean([np_cos(a, t) for a in g]), abs=1e-5)
    saved = json.loads((tmp_path / "out" / "clip_similarity.json").read_text())
    assert saved["image_similarity"] == result["image_similarity"] and saved["n_source"] == 2

    (tmp_path / "empty").mkdir()
    bad = list(args)
    bad[bad.index("--data_dir") + 1] = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="--data_dir .*holds no images"):
        script.main(bad)
    bad = list(args)
    bad[bad.index("--clip_model") + 1] = str(tmp_path / "no_clip")
    with pytest.raises(FileNotFoundError, match="--clip_model"):
        script.main(bad)


# ---------------------------------------------------------------- generation on the goldens' tiny models

TINY_GEN = ["--n_samples", "2", "--batch_size", "2", "--H", "32", "--W", "32", "--device", "cpu"]


def test_evaluate_model_generates_with_tiny_ldm(tmp_path, clip_dir):
    """Generation (tiny LDM + a learned ``*``), then CLIP scores equal to those recomputed from the saved samples."""
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    config = REPO / "configs" / "tests" / "golden_tiny_ldm.yaml"
    manager = inference.load_model(config, GOLDEN_WEIGHTS["ldm"]).embedding_manager
    torch.manual_seed(0)
    manager.string_to_param_dict["*"].data.normal_()  # a "learned" vector, not the initializer word's
    manager.save(tmp_path / "embeddings.pt")
    rng = np.random.default_rng(4)
    src = [tmp_path / "src" / f"{i}.png" for i in range(2)]
    for f in src:
        write_png(f, rng)
    out = tmp_path / "out"
    result = load_script("evaluate_model").main([
        "--prompt", "a photo of *", "--ckpt_path", str(GOLDEN_WEIGHTS["ldm"]), "--config", str(config),
        "--embedding_path", str(tmp_path / "embeddings.pt"), "--data_dir", str(tmp_path / "src"),
        "--clip_model", str(clip_dir), "--out_dir", str(out), "--ddim_steps", "3", "--data_size", "0", *TINY_GEN,
    ])  # fmt: skip
    samples = sorted((out / "samples").glob("*.png"))
    assert [f.name for f in samples] == ["0000.png", "0001.png"]
    arrays = [np.asarray(Image.open(f), dtype=np.float32) for f in samples]
    assert arrays[0].shape == (32, 32, 3) and arrays[0].std() > 1.0  # an image, not a flat fill
    assert np.abs(arrays[0] - arrays[1]).mean() > 1.0  # two different starting noises
    g, s = reference_image_features(clip_dir, samples), reference_image_features(clip_dir, src)
    t = reference_text_features(clip_dir, ["a photo of"])[0]
    saved = json.loads((out / "clip_similarity.json").read_text())
    assert saved == json.loads(json.dumps(result))
    # the script scores the float images, the PNGs are them rounded to 8 bits: a change of a few 1e-5 here
    assert saved["image_similarity"] == pytest.approx(np.mean([np_cos(a, b) for a in g for b in s]), abs=1e-4)
    assert saved["text_similarity"] == pytest.approx(np.mean([np_cos(a, t) for a in g]), abs=1e-4)
    assert saved["n_generated"] == 2 and saved["image_size"] == [32, 32] and saved["ddim_steps"] == 3


def test_evaluate_model_no_save_and_reruns_lose_nothing(tmp_path, clip_dir):
    """--no_save into an --out_dir whose samples/ holds earlier images and a user's files: they all stay (the run
    samples into its own temporary folder and removes only that); a rerun keeps the first clip_similarity.json."""
    require_fixture(GOLDEN_WEIGHTS["ldm"])
    config = REPO / "configs" / "tests" / "golden_tiny_ldm.yaml"
    rng = np.random.default_rng(5)
    for i in range(2):
        write_png(tmp_path / "src" / f"{i}.png", rng)
    out = tmp_path / "out"
    mine = {out / "samples" / "0000.png": b"an earlier image", out / "samples" / "notes.txt": b"the user's notes",
            out / "my-results.json": b"{}"}  # fmt: skip
    for path, content in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    argv = ["--prompt", "a photo of a cat", "--ckpt_path", str(GOLDEN_WEIGHTS["ldm"]), "--config", str(config),
            "--data_dir", str(tmp_path / "src"), "--clip_model", str(clip_dir), "--out_dir", str(out),
            "--ddim_steps", "2", "--data_size", "0", "--no_save", *TINY_GEN]  # fmt: skip
    script = load_script("evaluate_model")
    first = script.main(argv)
    assert all(path.read_bytes() == content for path, content in mine.items())  # the user's files survive
    assert sorted(p.name for p in out.iterdir()) == ["clip_similarity.json", "my-results.json", "samples"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["0000.png", "notes.txt"]  # nothing added there
    record = (out / "clip_similarity.json").read_text()
    assert json.loads(record) == json.loads(json.dumps(first)) and first["n_generated"] == 2
    second = script.main(argv)  # the same run again: its record is numbered, the first one stays as it was
    assert (out / "clip_similarity.json").read_text() == record
    assert json.loads((out / "clip_similarity-0001.json").read_text()) == json.loads(json.dumps(second))
    assert not [p for p in out.iterdir() if p.name.startswith(".samples-")]  # the temporary folders are gone


def test_evaluate_attend_excite_generates_with_tiny_sd(tmp_path, clip_dir):
    """--generate on the tiny SD model: both methods' images, A&E really guiding (with its flags), and the
    metrics equal to those recomputed from the saved images."""
    require_fixture(GOLDEN_WEIGHTS["sd"])
    prompt, templates = "a cat and a dog", ["a photo of {}.", "{} art"]
    (tmp_path / "prompts.txt").write_text(f"animal-animal\t{prompt}\n")
    (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n")
    out = tmp_path / "out"
    result = load_script("evaluate_attend_excite").main([
        "--generate", "--prompts", str(tmp_path / "prompts.txt"), "--templates", str(tmp_path / "templates.txt"),
        "--ckpt_path", str(GOLDEN_WEIGHTS["sd"]), "--config", str(REPO / "configs/tests/golden_tiny_sd.yaml"),
        "--clip_model", str(clip_dir), "--out_dir", str(out), "--ddim_steps", "4", "--seed", "1",
        "--ae_attention_res", "8", "--ae_max_refinement_steps", "2", *TINY_GEN,
    ])  # fmt: skip
    folders = {m: out / "images" / m / prompt for m in ("without_ae", "with_ae")}
    files = {m: sorted(f.glob("*.png")) for m, f in folders.items()}
    assert {m: [f.name for f in fs] for m, fs in files.items()} == {m: ["0000.png", "0001.png"] for m in folders}
    plain, guided = ([np.asarray(Image.open(f), dtype=np.float32) for f in files[m]] for m in folders)
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(plain, guided, strict=True))  # same noise, A&E changed it

    settings = {m: json.loads((f / "settings.json").read_text()) for m, f in folders.items()}
    assert settings["without_ae"]["attend_and_excite"] is None
    ae = settings["with_ae"]["attend_and_excite"]
    # 4 steps: thresholds {0, 10, 20} -> {0, 1, 2}, max_iter_to_alter 25 -> 2; the flags reached the config
    assert ae["thresholds"] == {"0": 0.05, "1": 0.5, "2": 0.8} and ae["max_iter_to_alter"] == 2
    assert ae["attention_res"] == 8 and ae["max_refinement_steps"] == 2 and ae["steps_run"] == 4
    assert ae["ae_tokens"] == "cat,dog" and ae["excited"] == [[2], [5]]  # CLIP BPE: a cat and a dog
    guidance = ae["guidance"]
    assert guidance["guided_steps"] == [0, 1, 2]  # updates at 0, 1; refinement check at 2
    assert guidance["updates"] == 2 * 2  # two samples, two update steps
    assert 0 <= guidance["refinement_iterations"] <= 2 * 3 * 2

    saved = json.loads((out / "clip_raw_metrics.json").read_text())
    assert saved["generation"]["attend_and_excite"]["thresholds"] == ae["thresholds"]
    assert saved == json.loads(json.dumps({**saved, "methods": result["raw"]}))
    for method in folders:
        got = saved["methods"][method]["prompts"][prompt]
        check_ae_scores(clip_dir, got, files[method], prompt, ("a cat", "a dog"), templates)
    aggregated = json.loads((out / "clip_aggregated_metrics.json").read_text())["methods"]
    assert aggregated["with_ae"]["animal-animal"]["min_object"] == pytest.approx(
        saved["methods"]["with_ae"]["prompts"][prompt]["min_object"]
    )
