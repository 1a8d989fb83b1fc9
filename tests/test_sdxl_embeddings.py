"""SDXL embedding files: the clip_l/clip_g safetensors AUTOMATIC1111, ComfyUI and diffusers share, read into and
written from the tiny SDXL model's embedding manager; convert/merge scripts; SD 1/SD 2 files refused by SDXL and the
reverse, with the family named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ldm.modules import embedding_interop as ei
from ldm.modules.embedding_manager import EmbeddingManager
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]
TINY_SDXL = REPO / "configs" / "tests" / "tiny_sdxl.yaml"
TINY_SD = REPO / "configs" / "tests" / "golden_tiny_sd.yaml"
STAR = 265  # '*' in the CLIP BPE vocabulary


@pytest.fixture(scope="module")
def conditioner():
    torch.manual_seed(0)
    return instantiate_from_config(OmegaConf.load(TINY_SDXL).model.params.cond_stage_config)


def sdxl_file(path: Path, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clip_l, clip_g = torch.randn(n, 16, generator=gen), torch.randn(n, 24, generator=gen)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))  # the shared SDXL layout
    return clip_l, clip_g


def test_tools_file_loads_into_both_towers(tmp_path, conditioner):
    clip_l, clip_g = sdxl_file(tmp_path / "my-concept.safetensors")
    manager = EmbeddingManager(conditioner, ["*"])
    ei.load_into_manager(manager, tmp_path / "my-concept.safetensors", placeholder="*", tokenizer=manager.tokenizer)
    vectors = manager.string_to_param_dict["*"].detach()
    assert torch.equal(vectors[:, :16], clip_l) and torch.equal(vectors[:, 16:], clip_g)
    ids = conditioner.tokenize(["a photo of *"])
    spliced_ids, emb = manager(ids, conditioner.token_embedding(ids))
    assert torch.equal(emb[0, 4:6], vectors) and (spliced_ids[0, 4:6] == STAR).all()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_manager_saves_clip_l_clip_g(tmp_path, conditioner, suffix):
    manager = EmbeddingManager(conditioner, ["*"], ["cat"])
    path = tmp_path / f"embeddings{suffix}"
    manager.save(path)
    vectors = manager.string_to_param_dict["*"].detach()
    flat = load_file(str(path)) if suffix == ".safetensors" else torch.load(path, weights_only=True)
    assert sorted(flat) == ["clip_g", "clip_l"]
    assert torch.equal(flat["clip_l"], vectors[:, :16]) and torch.equal(flat["clip_g"], vectors[:, 16:])
    reloaded = EmbeddingManager(conditioner, ["*"])
    reloaded.load(path)  # read as "*", as A1111's one-embedding files
    assert torch.equal(reloaded.string_to_param_dict["*"].detach(), vectors)


def test_sd1_file_refused_by_sdxl_and_the_reverse(tmp_path, conditioner):
    save_file({"emb_params": torch.randn(1, 768)}, str(tmp_path / "sd1.safetensors"))
    sdxl = EmbeddingManager(conditioner, ["*"])
    with pytest.raises(ei.EmbeddingFileError, match=r"size 768, which fits SD v1.*clip_l 16 and clip_g 24.*SDXL"):
        sdxl.load(tmp_path / "sd1.safetensors")
    sdxl_file(tmp_path / "xl.safetensors")
    sd = instantiate_from_config(OmegaConf.load(TINY_SD).model.params.cond_stage_config)
    with pytest.raises(ei.EmbeddingFileError, match=r"two towers \(clip_l 16, clip_g 24\).*needs size 32.*SDXL"):
        EmbeddingManager(sd, ["*"]).load(tmp_path / "xl.safetensors")
    released = {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}
    save_file(released, str(tmp_path / "real_xl.safetensors"))
    with pytest.raises(ei.EmbeddingFileError, match=r"which fits SDXL"):
        EmbeddingManager(sd, ["*"]).load(tmp_path / "real_xl.safetensors")


def test_convert_round_trip_and_merge(tmp_path, caplog):
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from convert_embedding import main as convert_main
    from merge_embeddings import main as merge_main

    clip_l, clip_g = sdxl_file(tmp_path / "a.safetensors", n=1, seed=1)
    args = ["--input", str(tmp_path / "a.safetensors"), "--config", str(TINY_SDXL), "--placeholder", "*"]
    assert convert_main([*args, "--output", str(tmp_path / "ti.safetensors"), "--to", "ti"]) == 0
    ti = ei.read_embeddings(tmp_path / "ti.safetensors")
    assert ti.tokens == {"*": STAR} and ti.towers == (("clip_l", 16), ("clip_g", 24))
    back = ["--input", str(tmp_path / "ti.safetensors"), "--output", str(tmp_path / "back.safetensors")]
    assert convert_main([*back, "--to", "a1111"]) == 0
    flat = load_file(str(tmp_path / "back.safetensors"))
    assert torch.equal(flat["clip_l"], clip_l) and torch.equal(flat["clip_g"], clip_g)
    sdxl_file(tmp_path / "b.safetensors", n=1, seed=2)
    other = ["--input", str(tmp_path / "b.safetensors"), "--config", str(TINY_SDXL), "--placeholder", "@"]
    assert convert_main([*other, "--output", str(tmp_path / "ti_b.safetensors"), "--to", "ti"]) == 0
    merged = tmp_path / "merged.safetensors"
    assert merge_main(["--manager_ckpts", str(tmp_path / "ti.safetensors"), str(tmp_path / "ti_b.safetensors"),
                       "--output_path", str(merged), "--config", str(TINY_SDXL)]) == 0  # fmt: skip
    both = ei.read_embeddings(merged)
    assert sorted(both.vectors) == ["*", "@"] and both.towers == (("clip_l", 16), ("clip_g", 24))
    wrong = ["--input", str(tmp_path / "a.safetensors"), "--output", str(tmp_path / "x.pt")]
    with pytest.raises(ei.EmbeddingFileError, match="SD 1/SD 2 embeddings .one tower. and SDXL embeddings"):
        convert_main([*wrong, "--config", str(TINY_SD)])  # run_cli prints it as one error: line
