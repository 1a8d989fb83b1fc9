"""Personalized datasets: which files are used, how every image mode becomes RGB, captions and templates."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data import personalized, personalized_style
from ldm.data.image_io import ImageFolderError, list_images, load_rgb
from ldm.data.templates import imagenet_templates_small, style_templates_small

RED = (200, 30, 40)


def _rgb_file(path, size=(8, 6), color=RED):
    Image.new("RGB", size, color).save(path)
    return path


def test_non_images_skipped_with_one_warning(tmp_path, caplog):
    _rgb_file(tmp_path / "a.png")
    _rgb_file(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="ldm.data.image_io"):
        images = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png", "b.jpg"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert all(name in warnings[0].getMessage() for name in ("notes.txt", "broken.png", "sub/"))


def test_empty_folder_error_names_it(tmp_path):
    with pytest.raises(ImageFolderError, match=str(tmp_path)):
        personalized.PersonalizedBase(tmp_path, size=8)
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(ImageFolderError, match="readme.md"):
        list_images(tmp_path)
    with pytest.raises(ImageFolderError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_greyscale_and_palette(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([*RED, 0, 0, 0] + [0] * 762)
    palette.save(tmp_path / "pal.png")
    assert np.asarray(load_rgb(tmp_path / "grey.png"))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(load_rgb(tmp_path / "pal.png"))[0, 0].tolist() == list(RED)


def test_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (0, 0, 255)  # hidden colour under full transparency
    rgba[:2, :, 3] = 255  # top half opaque blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = np.asarray(load_rgb(tmp_path / "alpha.png"))
    assert out[0, 0].tolist() == [0, 0, 255] and out[3, 3].tolist() == [255, 255, 255]
    palette = Image.new("P", (2, 1))
    palette.putpalette([*RED, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    palette.save(tmp_path / "ptrans.png", transparency=1)
    out = np.asarray(load_rgb(tmp_path / "ptrans.png"))
    assert out[0, 0].tolist() == list(RED) and out[0, 1].tolist() == [255, 255, 255]


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)  # 32896 / 257 = 128
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = np.asarray(load_rgb(tmp_path / "deep.png"))[0, :, 0]
    assert out.tolist() == [0, 128, 255, 4]


def test_exif_rotation_applied(tmp_path):
    pixels = np.zeros((2, 4, 3), np.uint8)  # stored 4 wide x 2 high; left half red
    pixels[:, :2] = RED
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    out = np.asarray(load_rgb(tmp_path / "rot.jpg"))
    assert out.shape == (4, 2, 3)  # upright: 2 wide x 4 high
    assert out[0, 0, 0] > 150 and out[3, 0, 0] < 100  # red (the stored left half) ends up on top


def test_item_layout_and_flip(tmp_path):
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[:, :4] = 255
    Image.fromarray(pixels).save(tmp_path / "half.png")
    always = personalized.PersonalizedBase(tmp_path, size=8, flip_p=1.0, repeats=3, interpolation="nearest")
    never = personalized.PersonalizedBase(tmp_path, size=8, flip_p=0.0, set="val", interpolation="nearest")
    assert len(always) == 3 and len(never) == 1
    a, b = always[0], never[0]
    assert a["image"].shape == (8, 8, 3) and a["image"].dtype == np.float32
    assert a["image"].min() == -1.0 and a["image"].max() == 1.0
    np.testing.assert_array_equal(a["image"], b["image"][:, ::-1])
    assert a["flipped"] and not b["flipped"] and a["image_index"] == 0 and a["image_path"].endswith("half.png")


def test_center_crop(tmp_path):
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, 2:6] = 255  # the centre square is white
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    item = personalized.PersonalizedBase(tmp_path, size=4, center_crop=True, flip_p=0.0, interpolation="nearest")[0]
    assert (item["image"] == 1.0).all()


def test_placeholder_and_coarse_class_reach_captions(tmp_path):
    _rgb_file(tmp_path / "a.png")
    data = personalized.PersonalizedBase(tmp_path, size=8, placeholder_token="@", coarse_class_text="dog")
    captions = {data[i]["caption"] for i in range(20)}
    assert all("dog @" in c for c in captions)
    assert captions <= {t.format("dog @") for t in imagenet_templates_small}
    style = personalized_style.PersonalizedBase(tmp_path, size=8, placeholder_token="@")
    assert style[0]["caption"] in {t.format("@") for t in style_templates_small}


def test_per_image_tokens(tmp_path):
    for i in range(2):
        _rgb_file(tmp_path / f"{i}.png")
    data = personalized.PersonalizedBase(tmp_path, size=8, per_image_tokens=True, mixing_prob=1.0)
    assert data[1]["caption"].endswith("with ב") or "ב" in data[1]["caption"]


def test_template_counts():
    assert len(imagenet_templates_small) == 81 and len(set(imagenet_templates_small)) == 57
    assert len(style_templates_small) == 19 and len(set(style_templates_small)) == 17


def test_templates_knob_replaces_the_caption_list(tmp_path):
    _rgb_file(tmp_path / "a.png")
    templates = ["a {}", "a photo of {}"]
    data = personalized.PersonalizedBase(tmp_path, size=8, placeholder_token="*", templates=templates)
    captions = {data[i]["caption"] for i in range(40)}
    assert captions == {"a *", "a photo of *"}
    style = personalized_style.PersonalizedBase(tmp_path, size=8, placeholder_token="*", templates=["{} style"])
    assert style[0]["caption"] == "* style"
    with pytest.raises(ValueError, match="exactly one"):
        personalized.PersonalizedBase(tmp_path, size=8, templates=["no placeholder here"])


def test_toyworld_finetune_templates_use_only_the_toy_vocabulary():
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    config = OmegaConf.load(root / "configs/toyworld/finetune.yaml")
    vocab = set((root / "configs/toyworld/vocab.txt").read_text().split())
    templates = config.data.params.train.params.templates
    assert templates == config.data.params.validation.params.templates
    words = {w for t in templates for w in t.format("*").split()}
    assert words <= vocab, f"words outside the ToyWorld vocabulary: {words - vocab}"
