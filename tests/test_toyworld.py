"""ToyWorld: scene generator, caption vocabulary and the detector (issue 5, parts 1, 2 and 4)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.toyworld.dataset import ToyWorldDataset
from ldm.toyworld.detect import (
    DetectorConfig,
    degrade,
    detect,
    detect_batch,
    parse_caption,
    scene_matches,
)
from ldm.toyworld.scenes import (
    BOUND_FACTOR,
    COLOURS,
    DEFAULT_HELDOUT,
    GENERIC_WORD,
    NAMED_SHAPES,
    VOCAB_PATH,
    SceneSpec,
    ToyObject,
    caption_for,
    heldout_specs,
    load_tokenizer,
    render_scene,
    sample_scene,
    scene_rng,
)
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]


def _specs(n: int, seed: int, **kw) -> list[SceneSpec]:
    return [sample_scene(scene_rng(seed, "train", i), **kw) for i in range(n)]


def _scene_correct(spec: SceneSpec, dets) -> bool:
    """All objects found once with the right shape and colour (matched by centre), and nothing else."""
    if len(dets) != len(spec.objects):
        return False
    for o in spec.objects:
        near = [d for d in dets if math.hypot(d.centroid[0] - o.centre[0], d.centroid[1] - o.centre[1]) < 0.8 * o.size]
        if len(near) != 1 or near[0].shape != o.shape or near[0].colour != o.colour:
            return False
    return True


# ---------------------------------------------------------------- scenes


def test_dataset_is_deterministic_by_seed_split_index():
    a = ToyWorldDataset(num_samples=50, seed=3)
    b = ToyWorldDataset(num_samples=50, seed=3)
    for i in (7, 0, 49, 7):  # access order does not matter
        x, y = a[i], b[i]
        assert x["caption"] == y["caption"]
        np.testing.assert_array_equal(x["image"], y["image"])
    other_seed = ToyWorldDataset(num_samples=50, seed=4)
    val = ToyWorldDataset(num_samples=50, seed=3, split="validation")
    diff_seed = sum(not np.array_equal(a[i]["image"], other_seed[i]["image"]) for i in range(10))
    diff_split = sum(not np.array_equal(a[i]["image"], val[i]["image"]) for i in range(10))
    assert diff_seed >= 9 and diff_split >= 9
    assert len(a) == 50 and np.array_equal(a[-1]["image"], a[49]["image"])
    with pytest.raises(IndexError):
        a[50]


def test_item_format_and_config_instantiation():
    cfg = OmegaConf.create(
        {"target": "ldm.toyworld.dataset.ToyWorldDataset", "params": {"size": 48, "num_samples": 8, "seed": 1}}
    )
    ds = instantiate_from_config(cfg)
    item = ds[0]
    assert set(item) == {"image", "caption"}
    assert item["image"].shape == (48, 48, 3) and item["image"].dtype == np.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["image"].max() > 0.8  # light background
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 48, 48, 3) and len(batch["caption"]) == 4


def test_scene_geometry_non_overlap_and_bounds():
    specs = _specs(400, seed=11)
    counts = Counter(len(s.objects) for s in specs)
    assert set(counts) <= {1, 2, 3} and min(counts[1], counts[2], counts[3]) > 50
    for s in specs:
        for o in s.objects:
            r = BOUND_FACTOR[o.shape] * o.size
            assert o.size >= 8.0 * 0.85 - 1e-6
            assert r <= o.centre[0] <= 64 - r and r <= o.centre[1] <= 64 - r
        for i, p in enumerate(s.objects):
            for q in s.objects[i + 1 :]:
                d = math.hypot(p.centre[0] - q.centre[0], p.centre[1] - q.centre[1])
                assert d >= BOUND_FACTOR[p.shape] * p.size + BOUND_FACTOR[q.shape] * q.size


def test_rendered_objects_do_not_touch_pixelwise():
    # independent of the geometry: draw each object alone and check that their (dilated) pixel masks are disjoint
    for spec in _specs(120, seed=12, min_objects=3):
        masks = []
        for o in spec.objects:
            img = np.asarray(render_scene(SceneSpec((o,), spec.background, spec.canvas)), dtype=np.int16)
            m = torch.from_numpy(np.abs(img - np.array(spec.background)).sum(-1) > 0).float()[None, None]
            masks.append(torch.nn.functional.max_pool2d(m, 3, 1, 1)[0, 0] > 0)  # grow by 1 px
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert not (masks[i] & masks[j]).any()


def test_render_is_antialiased_and_scales():
    obj = ToyObject("circle", "red", (32.0, 32.0), 10.0)
    img = np.asarray(render_scene(SceneSpec((obj,), (240, 240, 240), 64)), dtype=np.float32)
    levels = np.unique(img[..., 1])
    assert len(levels) > 10  # partial-coverage edge pixels exist
    # area of the drawn circle ~ pi r^2 (anti-aliased coverage summed)
    coverage = (240 - img[..., 1]) / (240 - COLOURS["red"][1])
    assert abs(coverage.sum() - math.pi * 100) < 0.03 * math.pi * 100
    big = render_scene(SceneSpec((obj,), (240, 240, 240), 64), size=128)
    assert big.size == (128, 128)


def test_captions_never_name_the_heldout_shape_and_match_the_scene():
    rng = np.random.default_rng(0)
    specs = _specs(1500, seed=13)
    generic_named, named_total, heldout_total = 0, 0, 0
    for spec in specs:
        cap = caption_for(spec, rng, generic_prob=0.2)
        words = cap.replace(",", " ").split()
        assert DEFAULT_HELDOUT not in words and "heart" not in words
        parsed = parse_caption(cap)
        assert len(parsed) == len(spec.objects)
        # each caption phrase names its object's colour (or none) and shape (or the generic word)
        assert any(
            all(
                colour in (None, o.colour) and shape in (o.shape, GENERIC_WORD)
                for (colour, shape), o in zip(parsed, perm)
            )
            for perm in itertools.permutations(spec.objects)
        ), cap
        for o in spec.objects:
            if o.shape == DEFAULT_HELDOUT:
                heldout_total += 1
            else:
                named_total += 1
        generic_named += sum(1 for _, s in parsed if s == GENERIC_WORD)
    assert heldout_total > 100
    # the generic word also covers named shapes (20% of the time), so it does not mean "the held-out shape"
    share = (generic_named - heldout_total) / named_total
    assert 0.15 < share < 0.25


def test_vocab_covers_all_captions_without_unk():
    tok = load_tokenizer()
    lines = VOCAB_PATH.read_text().splitlines()
    # BERT's specials, except slot 4 ([MASK], never used by the toy): the second placeholder "@"
    assert lines[:6] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "@", "*"] and len(lines) < 64
    assert tok.pad_token_id == 0 and len(tok) == len(lines)  # no [MASK] added past the embedding table
    unk = tok.unk_token_id
    rng = np.random.default_rng(1)
    all_colours = tuple(COLOURS)
    captions = [caption_for(s, rng) for s in _specs(1500, seed=14, colours=all_colours, heldout_prob=0.3)]
    ids = tok(captions, padding="max_length", max_length=77, truncation=True)["input_ids"]
    seen = set()
    for cap, row in zip(captions, ids):
        assert unk not in row, cap
        assert len(row) == 77 and row[0] == tok.cls_token_id
        seen.update(row)
    word_ids = {tok.convert_tokens_to_ids(w) for w in list(COLOURS) + list(NAMED_SHAPES) + [GENERIC_WORD, ","]}
    assert word_ids <= seen
    star = tok("a photo of *")["input_ids"]
    assert len(star) == 6 and tok.convert_ids_to_tokens(star)[4] == "*"
    assert tok.convert_ids_to_tokens(tok("a * and a @")["input_ids"]) == ["[CLS]", "a", "*", "and", "a", "@", "[SEP]"]
    assert tok("a photo of a star")["input_ids"][5] == unk  # no word for the held-out shape
    assert unk not in tok("A Photo of a RED circle, a blue square.")["input_ids"]
    # the project's LDM tokenizer path (BERTTokenizer) reads the same file to the same ids
    from ldm.modules.encoders.modules import BERTTokenizer

    ldm_tok = BERTTokenizer(vq_interface=False, max_length=77, vocab_file=VOCAB_PATH)
    assert ldm_tok(captions[:20]).tolist() == ids[:20]


# ---------------------------------------------------------------- detector


@pytest.fixture(scope="module")
def fresh_scenes():
    specs = _specs(320, seed=2024, colours=tuple(COLOURS))  # all five colours, star held out
    images = torch.stack([_to_tensor(render_scene(s)) for s in specs])  # [320, 3, 64, 64]
    return specs, images


def _accuracy(specs, images, config=None) -> float:
    return float(np.mean([_scene_correct(s, d) for s, d in zip(specs, detect_batch(images, config))]))


def test_detector_accuracy_clean(fresh_scenes):
    specs, images = fresh_scenes
    assert _accuracy(specs, images) >= 0.98


def test_detector_accuracy_after_generation_like_degradation(fresh_scenes):
    specs, images = fresh_scenes
    degraded = degrade(images, torch.Generator().manual_seed(5))
    assert (degraded - images).abs().mean() > 0.02  # the degradation really changes the images
    assert _accuracy(specs, degraded) >= 0.98
    half = slice(0, 160)  # a harder setting on half the scenes (keeps the test quick)
    strong = degrade(images[half], torch.Generator().manual_seed(6), max_blur_sigma=1.2, noise_std=(0.05, 0.05))
    assert _accuracy(specs[half], strong) >= 0.98


def test_detector_heart_world_and_other_size():
    specs = _specs(160, seed=77, heldout_shape="heart")
    images = torch.stack([_to_tensor(render_scene(s)) for s in specs])
    cfg = DetectorConfig(shapes=(*NAMED_SHAPES, "heart"))
    assert _accuracy(specs, degrade(images, torch.Generator().manual_seed(0)), cfg) >= 0.98
    big = _specs(40, seed=78, canvas=96)
    assert _accuracy(big, torch.stack([_to_tensor(render_scene(s)) for s in big])) >= 0.95


def test_detect_single_image_inputs_and_fields():
    spec = SceneSpec(
        (ToyObject("square", "blue", (18.0, 20.0), 10.0), ToyObject("star", "yellow", (44.0, 42.0), 11.0)),
        (238, 236, 241),
    )
    img = render_scene(spec)
    for inp in (img, _to_tensor(img)):
        dets = detect(inp)
        assert [(d.colour, d.shape) for d in dets] == [("blue", "square"), ("yellow", "star")]
    sq = detect(img)[0]
    assert abs(sq.area - 17**2) < 40  # side 2 * 0.85 * 10 = 17 px
    assert abs(sq.centroid[0] - 18) < 0.5 and abs(sq.centroid[1] - 20) < 0.5
    x0, y0, x1, y1 = sq.bbox
    assert abs((x1 - x0) - 17) <= 1 and abs((y1 - y0) - 17) <= 1
    blank = Image.new("RGB", (64, 64), (240, 240, 240))
    assert detect(blank) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detect(_to_tensor(img) * 2 - 1)
    with pytest.raises(ValueError, match="prototype"):
        DetectorConfig(shapes=("hexagon",))


def test_shipped_heldout_examples():
    files = sorted((REPO / "data" / "toyworld" / "heldout").glob("*.png"))
    assert 4 <= len(files) <= 5
    for f, s in zip(files, heldout_specs(len(files))):
        img = Image.open(f).convert("RGB")
        np.testing.assert_array_equal(np.asarray(img), np.asarray(render_scene(s)))  # reproducible by the script
        assert [d.shape for d in detect(img)] == [DEFAULT_HELDOUT]


# ---------------------------------------------------------------- captions <-> detections


def test_parse_caption_and_scene_matches():
    assert parse_caption("a photo of a red circle and a square") == [("red", "circle"), (None, "square")]
    assert parse_caption("a * and a blue circle", {"*": "star"}) == [(None, "star"), ("blue", "circle")]
    assert parse_caption("a green object, a red diamond and a yellow triangle.") == [
        ("green", "object"),
        ("red", "diamond"),
        ("yellow", "triangle"),
    ]
    spec = SceneSpec(
        (ToyObject("circle", "red", (16.0, 16.0), 9.0), ToyObject("triangle", "blue", (44.0, 44.0), 9.0)),
        (240, 240, 240),
    )
    dets = detect(render_scene(spec))
    assert scene_matches(dets, [("blue", "triangle"), ("red", "circle")], exact=True)
    assert scene_matches(dets, [(None, "circle")])
    assert not scene_matches(dets, [(None, "circle")], exact=True)
    assert not scene_matches(dets, [("red", "triangle")])
    assert not scene_matches(dets, [("red", "circle"), ("red", "object")])  # the red circle cannot count twice
    assert scene_matches(dets, [("red", "circle"), (None, "object")])


def test_bad_names_give_clear_errors():
    with pytest.raises(ValueError, match="hexagon"):
        ToyWorldDataset(shapes=["circle", "hexagon"])
    with pytest.raises(ValueError, match="orange"):
        ToyWorldDataset(colours=["orange"])
    with pytest.raises(ValueError, match="split"):
        ToyWorldDataset(split="dev")
    with pytest.raises(ValueError, match="heldout_shape"):
        ToyWorldDataset(shapes=["circle", "star"], heldout_shape="star")
