"""EmbeddingManager: construction, the pure splice, progressive words, file round trips and errors."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from ldm.data.personalized_tokens import per_img_token_list
from ldm.modules.embedding_manager import EmbeddingManager
from ldm.modules.encoders.modules import BERTEmbedder, FrozenCLIPEmbedder
from tests.conftest import FIXTURES, require_fixture

CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@lru_cache(maxsize=1)
def tiny_bert() -> BERTEmbedder:
    torch.manual_seed(0)
    return BERTEmbedder(n_embed=32, n_layer=1).eval()


@lru_cache(maxsize=1)
def tiny_clip() -> FrozenCLIPEmbedder:
    torch.manual_seed(0)
    return FrozenCLIPEmbedder(**CLIP_TINY).eval()


@pytest.mark.parametrize(
    "manifest, embedder_factory",
    [
        ("sd_v1_state_dict.json", lambda: FrozenCLIPEmbedder()),
        ("ldm_txt2img_1p4B_state_dict.json", lambda: BERTEmbedder(n_embed=1280, n_layer=32)),
    ],
)
def test_state_dict_matches_manifest(manifest, embedder_factory) -> None:
    keys = json.loads(require_fixture(FIXTURES / manifest).read_text())["keys"]
    expected = {k[len("embedding_manager.") :]: v for k, v in keys.items() if k.startswith("embedding_manager.")}
    with torch.device("meta"):
        manager = EmbeddingManager(embedder_factory(), ["*"], ["sculpture"])
    assert {k: list(v.shape) for k, v in manager.state_dict().items()} == expected


def test_initialisation_from_the_initializer_word() -> None:
    bert = tiny_bert()
    manager = EmbeddingManager(bert, ["*", "&"], ["sculpture"], num_vectors_per_token=2)
    assert int(manager.string_to_token_dict["*"]) == 1008
    row = bert.transformer.token_emb.weight[6743]
    assert torch.equal(manager.string_to_param_dict["*"].detach(), row.detach().repeat(2, 1))
    assert not manager.initial_embeddings["*"].requires_grad and manager.string_to_param_dict["*"].requires_grad
    assert set(manager.initial_embeddings) == {"*"}  # no initializer word for '&': uniform [0, 1) start
    rand_init = manager.string_to_param_dict["&"]
    assert rand_init.shape == (2, 32) and rand_init.min() >= 0 and rand_init.max() < 1
    assert {id(p) for p in manager.embedding_parameters()} == {id(p) for p in manager.string_to_param_dict.values()}
    with torch.no_grad():
        manager.string_to_param_dict["*"].add_(0.5)
    expected = (0.5**2 * 32) * torch.ones(2, 2)  # (v - v0)(v - v0)^T with v - v0 = 0.5 everywhere, 1 placeholder
    torch.testing.assert_close(manager.embedding_to_coarse_loss(), expected)


def test_per_image_tokens_add_the_hebrew_letters() -> None:
    manager = EmbeddingManager(tiny_bert(), ["*"], ["sculpture"], per_image_tokens=True)
    assert list(manager.string_to_token_dict) == ["*", *per_img_token_list]
    assert len(per_img_token_list) == 22


@pytest.mark.parametrize("factory", [tiny_bert, tiny_clip])
def test_non_single_token_placeholder_is_rejected(factory) -> None:
    with pytest.raises(ValueError, match="photogrammetry.*not a single token"):
        EmbeddingManager(factory(), ["photogrammetry"])
    with pytest.raises(ValueError, match="photogrammetry"):
        EmbeddingManager(factory(), ["*"], ["photogrammetry"])


def reference_splice(ids: list[int], emb: list[torch.Tensor], token: int, vectors: torch.Tensor, k: int):
    """Independent list-based splice: each occurrence -> k copies, later tokens shift, truncate to len(ids)."""
    out_ids: list[int] = []
    out_emb: list[torch.Tensor] = []
    for i, e in zip(ids, emb):
        if i == token:
            out_ids += [token] * k
            out_emb += list(vectors[:k])
        else:
            out_ids.append(i)
            out_emb.append(e)
    return out_ids[: len(ids)], torch.stack(out_emb[: len(ids)])


def test_forward_single_and_multi_vector_is_pure() -> None:
    bert = tiny_bert()
    ids = torch.tensor([[101, 1037, 1008, 1999, 1008, 102, 0, 0], [101, 1008, 2, 3, 4, 5, 6, 1008]])
    emb = bert.token_embedding(ids).detach()
    ids_before, emb_before = ids.clone(), emb.clone()

    single = EmbeddingManager(bert, ["*"], ["sculpture"])
    out_ids, out_emb = single(ids, emb)
    assert torch.equal(out_ids, ids)
    is_star = ids == 1008
    assert torch.equal(out_emb[is_star], single.string_to_param_dict["*"].detach().expand(int(is_star.sum()), -1))
    assert torch.equal(out_emb[~is_star], emb[~is_star])

    multi = EmbeddingManager(bert, ["*"], num_vectors_per_token=3)
    vectors = multi.string_to_param_dict["*"].detach()
    out_ids, out_emb = multi(ids, emb)
    for row in range(2):
        ref_ids, ref_emb = reference_splice(ids[row].tolist(), list(emb[row]), 1008, vectors, 3)
        assert out_ids[row].tolist() == ref_ids
        assert torch.equal(out_emb[row], ref_emb)
    assert out_ids[0].tolist() == [101, 1037, 1008, 1008, 1008, 1999, 1008, 1008]  # truncated to 8
    assert torch.equal(ids, ids_before) and torch.equal(emb, emb_before)


def test_gradient_reaches_the_placeholder_vectors() -> None:
    bert = tiny_bert()
    for nv in (1, 3):
        manager = EmbeddingManager(bert, ["*"], ["sculpture"], num_vectors_per_token=nv)
        out = bert.encode(["a photo of *"], embedding_manager=manager)
        out.square().sum().backward()
        grad = manager.string_to_param_dict["*"].grad
        assert grad is not None and bool((grad.abs().sum(dim=1) > 0).all())


def test_progressive_words() -> None:
    bert = tiny_bert()
    manager = EmbeddingManager(bert, ["*"], num_vectors_per_token=3, progressive_words=True)
    ids = torch.tensor([[101, 1008, 1037, 102, 0, 0]])
    emb = bert.token_embedding(ids).detach()
    counts = []
    for step in (0, 1999, 2000, 4000, 10_000):
        manager.set_progress(step)
        counts.append(int((manager(ids, emb)[0] == 1008).sum()))
    assert counts == [1, 1, 2, 3, 3]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix: str) -> None:
    clip = tiny_clip()
    source = EmbeddingManager(clip, ["*"], ["sculpture"], num_vectors_per_token=2)
    with torch.no_grad():
        source.string_to_param_dict["*"].normal_()
    path = tmp_path / f"embeddings{suffix}"
    source.save(path)
    if suffix == ".pt":  # the original format: its two keys, 0-dim int64 tokens, an nn.ParameterDict
        raw = torch.load(path, weights_only=False)
        # and the model family this project records (a string the original's loader, A1111's and diffusers' ignore)
        assert set(raw) == {"string_to_token", "string_to_param", "family"} and raw["family"] == "sd1"
        assert isinstance(raw["string_to_param"], torch.nn.ParameterDict)
        assert raw["string_to_token"]["*"].shape == () and raw["string_to_token"]["*"].dtype == torch.int64
    target = EmbeddingManager(clip, ["*"], ["painting"])
    target.load(path)
    assert {k: int(v) for k, v in target.string_to_token_dict.items()} == {"*": 265}
    assert torch.equal(target.string_to_param_dict["*"], source.string_to_param_dict["*"])
    assert target.max_vectors_per_token == 2
    assert isinstance(target.string_to_param_dict, torch.nn.ParameterDict)


def test_load_accepts_a_plain_dict_and_rejects_bad_files(tmp_path) -> None:
    clip = tiny_clip()
    plain = tmp_path / "plain.pt"
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": torch.ones(1, 32)}}, plain)
    manager = EmbeddingManager(clip, ["*"], embedding_manager_ckpt=str(plain))
    assert torch.equal(manager.string_to_param_dict["*"].detach(), torch.ones(1, 32))

    wrong_dim = tmp_path / "ldm.pt"
    torch.save({"string_to_token": {"*": torch.tensor(1008)}, "string_to_param": {"*": torch.ones(1, 1280)}}, wrong_dim)
    with pytest.raises(ValueError, match="1280"):
        manager.load(wrong_dim)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"string_to_token": {}, "string_to_param": {}, "x": torch.nn.Linear(1, 1)}, unsafe)
    with pytest.raises(ValueError, match="Refused to load.*Linear"):
        manager.load(unsafe)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        manager.load(tmp_path / "missing.pt")
