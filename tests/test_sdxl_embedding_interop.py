"""SDXL embedding files between ours and diffusers, on the tiny towers (tests/fixtures/sdxl/interop/, made by
make_embedding_interop.py: diffusers 0.42.1 ran in a scratch environment; these tests never import it).

- A file our writer makes (``EmbeddingManager.save``: ``clip_l``/``clip_g``) went through diffusers' two documented
  ``load_textual_inversion`` calls; the rows that landed in ``text_encoder`` and ``text_encoder_2`` are our vectors,
  bit for bit, at the prompt positions where ours splices them.
- A file diffusers users make (the SDXL pivotal-tuning example's ``{"clip_l", "clip_g"}`` safetensors) loads into ours
  with the rows diffusers held in its two text encoders, at the same prompt positions, in both towers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ldm.guidance.tokens import prompt_tokens, resolve_ae_tokens
from ldm.modules import embedding_interop as ei
from ldm.modules.embedding_manager import EmbeddingManager
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "sdxl"
INTEROP = FIX / "interop"
RECORD = json.loads((INTEROP / "interop.json").read_text())
TINY_SDXL = REPO / "configs" / "tests" / "tiny_sdxl.yaml"
STAR = 265  # '*' in the CLIP BPE vocabulary


@pytest.fixture(scope="module")
def conditioner():
    torch.manual_seed(0)
    return instantiate_from_config(OmegaConf.load(TINY_SDXL).model.params.cond_stage_config)


def spliced(conditioner, manager: EmbeddingManager, prompt: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tower, the ids and raw token embeddings the tower gets after the splice (as ``SDXLConditioner`` does:
    each tower tokenizes with its own padding, the manager splices the side-by-side vectors, the tower keeps its
    part): ``[(ids [77], emb [77, D_tower])]``."""
    d_l = conditioner.tower_widths[0]
    out = []
    for k, tower in enumerate(conditioner.towers):
        ids = tower.tokenize([prompt])  # [1, 77]
        emb = conditioner.token_embedding(ids)  # [1, 77, D_l + D_g]
        ids, emb = manager(ids, emb)
        out.append((ids[0], emb[0, :, :d_l] if k == 0 else emb[0, :, d_l:]))
    return out


def placeholder_positions(ids: torch.Tensor, token_ids: list[int]) -> list[int]:
    return [p for p in range(ids.shape[0]) if int(ids[p]) in token_ids]


def test_our_file_loads_in_diffusers_with_identical_vectors(tmp_path, conditioner):
    record = RECORD["diffusers_loads_ours"]
    source = load_file(str(INTEROP / "ours_source.safetensors"))["vectors"]  # [2, 16 + 24]
    manager = EmbeddingManager(conditioner, ["*"], num_vectors_per_token=2)
    with torch.no_grad():
        manager.string_to_param_dict["*"].copy_(source)
    manager.save(tmp_path / "my-concept.safetensors")
    written = load_file(str(tmp_path / "my-concept.safetensors"))
    given = load_file(str(FIX / RECORD["ours"]["file"]))
    # what diffusers was given is what our writer writes today
    assert sorted(written) == sorted(given) == ["clip_g", "clip_l"]
    assert all(torch.equal(written[k], given[k]) for k in written)
    loaded = load_file(str(INTEROP / "diffusers_loaded.safetensors"))
    assert torch.equal(loaded["text_encoder_rows"], source[:, :16])  # CLIP ViT-L: clip_l
    assert torch.equal(loaded["text_encoder_2_rows"], source[:, 16:])  # bigG: clip_g
    # the same prompt positions: diffusers spells the 2-vector token as "<my-concept> <my-concept>_1"
    ours = spliced(conditioner, manager, record["prompt"].replace(record["token"], "*"))
    for (ids, emb), suffix in zip(ours, ("", "_2"), strict=True):
        theirs = loaded[f"prompt_ids{suffix}"]
        positions = placeholder_positions(theirs, record[f"token_ids{suffix}"])
        assert positions == placeholder_positions(ids, [STAR]) == [4, 5]
        others = [p for p in range(77) if p not in positions]
        assert torch.equal(ids[others], theirs[others])  # the rest of the prompt and the padding agree
        assert torch.equal(emb[positions], loaded[f"text_encoder{suffix}_rows"])


def test_diffusers_made_file_loads_into_ours(conditioner):
    record = RECORD["diffusers_made"]
    rows = load_file(str(INTEROP / "diffusers_made_rows.safetensors"))
    path = FIX / record["file"]
    embeddings = ei.read_embeddings(path)
    assert embeddings.source_format == "sdxl" and embeddings.towers == (("clip_l", 16), ("clip_g", 24))
    assert embeddings.name == path.stem  # the trigger word A1111 and ComfyUI use
    manager = EmbeddingManager(conditioner, ["*"])
    manager.load(path)  # --embedding_path: read as "*"
    vectors = manager.string_to_param_dict["*"].detach()
    assert torch.equal(vectors, torch.cat([rows["text_encoder_rows"], rows["text_encoder_2_rows"]], dim=1))
    # diffusers' prompt "a photo of <s0><s1> on a beach" is ours "a photo of * on a beach": same positions, rows
    model = SimpleNamespace(cond_stage_model=conditioner, embedding_manager=manager)
    prompt = record["prompt"].replace("".join(record["tokens"]), "*")
    tokens = prompt_tokens(model, prompt)
    groups = resolve_ae_tokens("*", tokens.ids, conditioner.tokenizer, tokens.placeholders)
    for (ids, emb), suffix in zip(spliced(conditioner, manager, prompt), ("", "_2"), strict=True):
        positions = placeholder_positions(rows[f"prompt_ids{suffix}"], record["token_ids"])
        assert groups == (tuple(positions),) and placeholder_positions(ids, [STAR]) == positions == [4, 5]
        assert torch.equal(emb[positions], rows[f"text_encoder{suffix}_rows"])


def test_diffusers_made_file_renamed_and_converted(tmp_path, conditioner):
    """A diffusers file under another placeholder (``load_into_manager``) and converted to ours and back."""
    record = RECORD["diffusers_made"]
    rows = load_file(str(INTEROP / "diffusers_made_rows.safetensors"))
    manager = EmbeddingManager(conditioner, ["@"])
    ei.load_into_manager(manager, FIX / record["file"], placeholder="@", tokenizer=manager.tokenizer)
    expected = torch.cat([rows["text_encoder_rows"], rows["text_encoder_2_rows"]], dim=1)
    assert torch.equal(manager.string_to_param_dict["@"].detach(), expected)
    ti = ei.with_token_ids(ei.read_embeddings(FIX / record["file"]), manager.tokenizer)
    ei.write_embeddings(ti, tmp_path / "ti.safetensors", fmt="ti")
    ei.write_embeddings(ei.read_embeddings(tmp_path / "ti.safetensors"), tmp_path / "back.safetensors", fmt="a1111")
    back, original = load_file(str(tmp_path / "back.safetensors")), load_file(str(FIX / record["file"]))
    assert sorted(back) == ["clip_g", "clip_l"] and all(torch.equal(back[k], original[k]) for k in back)


def test_the_inference_config_with_tokens_is_sgm_s_model_plus_the_placeholder():
    """configs/sdxl/sd_xl_base-inference_with_tokens.yaml (for --embedding_path) = sgm's full-size state dict + one
    "*" of 768 + 1280 (and its initializer copy), which the released checkpoint does not hold."""
    manifest = json.loads((FIX / "sd_xl_base_state_dict.json").read_text())["keys"]
    with torch.device("meta"):
        config = OmegaConf.load(REPO / "configs" / "sdxl" / "sd_xl_base-inference_with_tokens.yaml")
        model = instantiate_from_config(config.model)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    manager = {k: got.pop(k) for k in [k for k in got if k.startswith("embedding_manager.")]}
    assert got == {k: v for k, v in manifest.items() if k != "denoiser.sigmas"}
    assert manager == {
        "embedding_manager.string_to_param_dict.*": [1, 2048],
        "embedding_manager.initial_embeddings.*": [1, 2048],
    }


def test_diffusers_one_tower_sdxl_file_is_refused_with_its_family(tmp_path, conditioner):
    """diffusers' textual_inversion_sdxl.py trains the first tower only and saves {token: [n, 768]}: SD v1's width."""
    from safetensors.torch import save_file

    save_file({"<cat-toy>": torch.randn(1, 768)}, str(tmp_path / "learned_embeds.safetensors"))
    refused = r"size 768, which fits SD v1.*clip_l 16 and clip_g 24.*do not convert"
    with pytest.raises(ei.EmbeddingFileError, match=refused):
        EmbeddingManager(conditioner, ["*"]).load(tmp_path / "learned_embeds.safetensors")
