"""Embedding files: every format round-trips, foreign layouts built from their documented structures load,
sizes are checked against model families, nothing but tensors (and ParameterDict) is unpickled."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ldm.modules import embedding_interop as ei

CLIP_STAR, BERT_STAR = 265, 1008  # ids of '*' (environment.md)


def _vectors(dim=768, nv=1, seed=0):
    return torch.randn(nv, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ei.FORMATS)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip(tmp_path, fmt, suffix):
    source = ei.Embeddings({"*": _vectors(nv=2)}, {"*": CLIP_STAR})
    path = ei.write_embeddings(source, tmp_path / f"emb{suffix}", fmt)
    back = ei.read_embeddings(path)
    assert back.source_format == fmt
    (vector,) = back.vectors.values()
    assert torch.equal(vector, source.vectors["*"])
    if fmt == "ti":
        assert back.tokens == {"*": CLIP_STAR}


def test_original_ti_structure_is_kept(tmp_path):
    """What the original code writes and reads: a dict of 0-dim int64 tensors and an nn.ParameterDict."""
    ei.write_embeddings(ei.Embeddings({"*": _vectors(1280)}, {"*": BERT_STAR}), tmp_path / "e.pt", "ti")
    with torch.serialization.safe_globals([nn.ParameterDict]):
        raw = torch.load(tmp_path / "e.pt", weights_only=True)
    assert set(raw) == {"string_to_token", "string_to_param"}
    assert isinstance(raw["string_to_param"], nn.ParameterDict)
    assert raw["string_to_token"]["*"].dtype == torch.int64 and raw["string_to_token"]["*"].dim() == 0


def test_a1111_files_built_from_documented_structure(tmp_path):
    vector = _vectors(768, nv=3)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vector}, "name": "my-style", "step": 1500,
                "sd_checkpoint": "abc123", "sd_checkpoint_name": "v1-5"}, tmp_path / "my-style.pt")  # fmt: skip
    save_file({"emb_params": vector}, str(tmp_path / "my-style.safetensors"))
    for suffix in (".pt", ".safetensors"):
        loaded = ei.read_embeddings(tmp_path / f"my-style{suffix}")
        assert loaded.source_format == "a1111" and loaded.name == "my-style"
        assert torch.equal(loaded.vectors["*"], vector)


def test_diffusers_files_built_from_documented_structure(tmp_path):
    vector = _vectors(768)[0]  # [768], the diffusers layout for one vector
    torch.save({"<cat-toy>": vector}, tmp_path / "learned_embeds.bin")
    save_file({"<cat-toy>": vector}, str(tmp_path / "learned_embeds.safetensors"))
    for name in ("learned_embeds.bin", "learned_embeds.safetensors"):
        loaded = ei.read_embeddings(tmp_path / name)
        assert loaded.source_format == "diffusers"
        assert torch.equal(loaded.vectors["<cat-toy>"], vector[None])


@pytest.mark.parametrize(("dim", "family"), [(768, "SD v1"), (1024, "SD v2"), (1280, "LDM")])
def test_wrong_size_names_family(dim, family):
    other = 1280 if dim != 1280 else 768
    with pytest.raises(ei.EmbeddingFileError, match=f"size {dim}, which fits {family}"):
        ei.check_dim(ei.Embeddings({"*": _vectors(dim)}), other, "x.pt")


def test_unsafe_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": Evil()}, f)
    torch.save({"string_to_param": {"*": _vectors()}, "extra": Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(ei.EmbeddingFileError, match="Refused|corrupt"):
            ei.read_embeddings(tmp_path / name)


def test_unknown_layout_and_multi_token_placeholder(tmp_path):
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(ei.EmbeddingFileError, match="not a known embeddings layout"):
        ei.read_embeddings(tmp_path / "odd.pt")
    with pytest.raises(ei.EmbeddingFileError, match="not a single token"):
        ei.with_token_ids(ei.Embeddings({"<cat-toy>": _vectors()}))
    filled = ei.with_token_ids(ei.Embeddings({"*": _vectors()}))
    assert filled.tokens == {"*": CLIP_STAR}
    assert ei.with_token_ids(ei.Embeddings({"*": _vectors(1280)})).tokens == {"*": BERT_STAR}


def test_convert_script_and_load_into_manager(tmp_path):
    """A diffusers file -> TI (renamed to '*') -> loaded into an EmbeddingManager of a tiny CLIP encoder."""
    from scripts.convert_embedding import main as convert_main

    vector = _vectors(32)[0]
    torch.save({"<cat-toy>": vector}, tmp_path / "learned_embeds.bin")
    rc = convert_main(["--input", str(tmp_path / "learned_embeds.bin"), "--output", str(tmp_path / "ti.pt"),
                       "--to", "a1111", "--name", "cat-toy"])  # fmt: skip
    assert rc == 0 and ei.read_embeddings(tmp_path / "ti.pt").name == "cat-toy"
    with pytest.raises(ei.EmbeddingFileError, match="size 32"):
        convert_main(["--input", str(tmp_path / "ti.pt"), "--output", str(tmp_path / "x.pt"), "--expect_dim", "768"])

    from ldm.modules.embedding_manager import EmbeddingManager
    from ldm.modules.encoders.modules import FrozenCLIPEmbedder

    embedder = FrozenCLIPEmbedder(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    manager = EmbeddingManager(embedder, ["*"], ["sculpture"])
    ei.load_into_manager(manager, tmp_path / "ti.pt", placeholder="@", tokenizer=embedder.tokenizer)
    assert torch.equal(manager.string_to_param_dict["@"].detach()[0], vector)
    assert int(manager.string_to_token_dict["@"]) == embedder.single_token_id("@")
    ids = embedder.tokenize(["a photo of @"])
    _, emb = manager(ids, embedder.token_embedding(ids))
    assert torch.equal(emb[0, 4], vector)  # [BOS] a photo of @


def test_merge_script_rename_and_clash(tmp_path):
    from scripts.merge_embeddings import main as merge_main

    for i in range(2):
        ei.write_embeddings(ei.Embeddings({"*": _vectors(seed=i)}, {"*": CLIP_STAR}), tmp_path / f"{i}.pt", "ti")
    inputs = ["--manager_ckpts", str(tmp_path / "0.pt"), str(tmp_path / "1.pt"), "-sd"]
    with pytest.raises(ei.EmbeddingFileError, match="already used by an earlier file"):  # clash, no rename
        merge_main([*inputs, "--output_path", str(tmp_path / "m.pt")])
    assert merge_main([*inputs, "--output_path", str(tmp_path / "m.pt"), "--rename", "*=@"]) == 0
    merged = ei.read_embeddings(tmp_path / "m.pt")
    assert set(merged.vectors) == {"*", "@"}
    assert torch.equal(merged.vectors["@"], _vectors(seed=1)) and merged.tokens["*"] == CLIP_STAR
    with pytest.raises(ei.EmbeddingFileError, match="size 768"):  # 768 files for an LDM merge
        merge_main([*inputs[:-1], "--output_path", str(tmp_path / "l.pt")])
