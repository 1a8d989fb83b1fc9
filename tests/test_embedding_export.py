"""Embedding files other tools read (issue 11, sections 4 and 5): `.pt` zips with only the members AUTOMATIC1111's
safe-unpickle check allows, umask permissions, the model's own tokenizer for any vector size, clear errors."""

from __future__ import annotations

import os
import pickle
import re
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, require_fixture
from safetensors.torch import save_file
from torch import nn

from ldm.modules import embedding_interop as ei

SD_CONFIG = REPO / "configs/tests/golden_tiny_sd.yaml"
CLIP_STAR, CLIP_SKS = 265, 48136  # CLIP BPE ids of '*' and 'sks'

# AUTOMATIC1111's check, written from its description: a `.pt` zip may hold only <archive>/data.pkl,
# <archive>/version and <archive>/data/<n>; data.pkl may name only these globals.
A1111_MEMBERS = re.compile(r"^([^/]+)/(data\.pkl|version|data/\d+)$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "IntStorage"), ("torch", "LongStorage"),
    ("torch", "DoubleStorage"), ("torch", "ByteStorage"), ("torch", "BFloat16Storage"),
    ("torch.nn.modules.container", "ParameterDict"), ("__builtin__", "set"), ("builtins", "set"),
}  # fmt: skip


class _Stub:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Names only: every allowed global becomes a stub; anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in A1111_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
        return _Stub

    def persistent_load(self, pid):
        assert pid[0] == "storage"
        return _Stub()


def passes_a1111_check(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        matches = [A1111_MEMBERS.match(n) for n in names]
        if not all(matches) or len({m.group(1) for m in matches}) != 1:
            return False
        (pkl,) = [n for n in names if n.endswith("/data.pkl")]
        with archive.open(pkl) as f:
            _RestrictedUnpickler(f).load()
    return True


def _vectors(dim=32, nv=1, seed=0):
    return torch.randn(nv, dim, generator=torch.Generator().manual_seed(seed))


def _tiny_clip_manager():
    from ldm.modules.embedding_manager import EmbeddingManager
    from ldm.modules.encoders.modules import FrozenCLIPEmbedder

    embedder = FrozenCLIPEmbedder(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return embedder, EmbeddingManager(embedder, ["*"], ["sculpture"], num_vectors_per_token=2)


# ---------------------------------------------------------------- the .pt container


def test_torch_save_alone_fails_the_check(tmp_path):
    """The reason for the rewrite: torch's own zip adds records the allow-list refuses (the check can fail)."""
    torch.save({"*": _vectors()}, tmp_path / "plain.pt")
    names = zipfile.ZipFile(tmp_path / "plain.pt").namelist()
    assert any(n.endswith(("/byteorder", "/.format_version")) for n in names)
    assert not passes_a1111_check(tmp_path / "plain.pt")


@pytest.mark.parametrize("fmt", ei.FORMATS)
def test_written_pt_passes_the_a1111_check_and_loads(tmp_path, fmt):
    source = ei.Embeddings({"*": _vectors(nv=3)}, {"*": CLIP_STAR}, name="my-style")
    path = ei.write_embeddings(source, tmp_path / "my-style.pt", fmt)
    assert passes_a1111_check(path)
    names = zipfile.ZipFile(path).namelist()
    assert {n.split("/", 1)[1] for n in names} >= {"data.pkl", "version", "data/0"}
    with torch.serialization.safe_globals([nn.ParameterDict]):
        raw = torch.load(path, map_location="cpu", weights_only=True)  # what diffusers and ComfyUI call
    stored = {"ti": lambda r: r["string_to_param"]["*"], "a1111": lambda r: r["string_to_param"]["*"],
              "diffusers": lambda r: r["*"]}[fmt](raw)  # fmt: skip
    assert torch.equal(stored.detach(), source.vectors["*"])
    back = ei.read_embeddings(path)
    assert back.source_format == fmt and torch.equal(back.vectors["*"], source.vectors["*"])


def test_manager_and_training_writer_files_pass_the_check(tmp_path):
    from ldm.callbacks.embeddings import EmbeddingWriter

    embedder, manager = _tiny_clip_manager()

    class Module:
        embedding_manager = manager

    paths = EmbeddingWriter(tmp_path).write(Module(), global_step=7)
    assert sorted(p.name for p in paths) == sorted(
        ["embeddings.pt", "embeddings.safetensors", "embeddings_gs-7.pt", "embeddings_gs-7.safetensors"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    for path in paths:
        if path.suffix == ".pt":
            assert passes_a1111_check(path)
        back = ei.read_embeddings(path)
        assert torch.equal(back.vectors["*"], manager.string_to_param_dict["*"].detach())
        assert back.tokens == {"*": embedder.single_token_id("*")}
    # A resumed run reaching step 7 again: the step's earlier files stay, its own are numbered (both twins alike);
    # embeddings.pt, the latest, is replaced.
    first = {p.name: p.read_bytes() for p in paths if "gs-" in p.name}
    manager.string_to_param_dict["*"].data += 1.0
    again = EmbeddingWriter(tmp_path).write(Module(), global_step=7)
    assert sorted(p.name for p in again) == sorted(
        ["embeddings.pt", "embeddings.safetensors", "embeddings_gs-7-0001.pt", "embeddings_gs-7-0001.safetensors"]
    )
    assert all((tmp_path / name).read_bytes() == content for name, content in first.items())
    assert torch.equal(ei.read_embeddings(tmp_path / "embeddings.pt").vectors["*"], manager.string_to_param_dict["*"])
    assert passes_a1111_check(tmp_path / "embeddings_gs-7-0001.pt")


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_embedding_files_get_umask_permissions(tmp_path, mask):
    from scripts.convert_embedding import main as convert_main
    from scripts.merge_embeddings import main as merge_main

    _, manager = _tiny_clip_manager()
    old = os.umask(mask)
    try:
        written = [
            ei.write_embeddings(ei.Embeddings({"*": _vectors(768)}, {"*": CLIP_STAR}), tmp_path / f"{fmt}{suffix}", fmt)
            for fmt in ei.FORMATS
            for suffix in (".pt", ".safetensors")
        ]
        for suffix in (".pt", ".safetensors"):
            manager.save(tmp_path / f"manager{suffix}")
            written.append(tmp_path / f"manager{suffix}")
        assert convert_main(["--input", str(tmp_path / "ti.pt"), "--output", str(tmp_path / "c.safetensors")]) == 0
        inputs = ["--manager_ckpts", str(tmp_path / "ti.pt"), str(tmp_path / "a1111.pt"), "-sd", "--rename", "*=@"]
        assert merge_main([*inputs, "--output_path", str(tmp_path / "m.pt")]) == 0
        written += [tmp_path / "c.safetensors", tmp_path / "m.pt"]
    finally:
        os.umask(old)
    assert len(written) == 10
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


# ---------------------------------------------------------------- the model's own tokenizer


def test_embedding_path_on_the_tiny_sd_model_uses_its_tokenizer(tmp_path):
    """diffusers- and kohya-style files of width 32 load into the tiny golden SD model through --embedding_path."""
    from ldm import inference

    require_fixture(GOLDEN_WEIGHTS["sd"])
    sks = _vectors(seed=1)[0]  # [32]: diffusers stores one vector per token
    torch.save({"sks": sks}, tmp_path / "learned_embeds.bin")
    kohya = _vectors(nv=2, seed=2)  # [2, 32]: kohya / A1111 safetensors, the trigger word is the file name
    save_file({"emb_params": kohya}, str(tmp_path / "my-style.safetensors"))

    model = inference.load_model(SD_CONFIG, GOLDEN_WEIGHTS["sd"], tmp_path / "learned_embeds.bin")
    encoder, manager = model.cond_stage_model, model.embedding_manager
    assert {k: int(v) for k, v in manager.string_to_token_dict.items()} == {"sks": CLIP_SKS}
    assert encoder.single_token_id("sks") == CLIP_SKS
    ids = encoder.tokenize(["a photo of sks"])
    _, emb = manager(ids, encoder.token_embedding(ids))  # [1, 77, 32]
    assert torch.equal(emb[0, 4], sks)  # [BOS] a photo of sks

    manager.load(tmp_path / "my-style.safetensors")
    assert {k: int(v) for k, v in manager.string_to_token_dict.items()} == {"*": CLIP_STAR}
    ids = encoder.tokenize(["a photo of * ."])
    _, emb = manager(ids, encoder.token_embedding(ids))
    assert torch.equal(emb[0, 4:6], kohya)  # the two vectors spliced in for '*'

    torch.save({"<cat-toy>": sks}, tmp_path / "multi.bin")  # not one CLIP token: a clear error naming it
    with pytest.raises(ei.EmbeddingFileError, match="'<cat-toy>' is not a single token"):
        manager.load(tmp_path / "multi.bin")


def test_unknown_word_is_refused_not_mapped_to_unk():
    tokenizer = ei.tokenizer_for_dim(1280)  # BERT: an emoji is [UNK]
    with pytest.raises(ei.EmbeddingFileError, match="not in the tokenizer's vocabulary.*unknown token"):
        ei.with_token_ids(ei.Embeddings({"\U0001f431": _vectors(1280)}), tokenizer)


def test_convert_with_the_models_config(tmp_path, caplog):
    from scripts.convert_embedding import main as convert_main

    torch.save({"sks": _vectors(seed=1)[0]}, tmp_path / "learned_embeds.bin")
    args = ["--input", str(tmp_path / "learned_embeds.bin"), "--to", "ti"]
    with pytest.raises(ei.EmbeddingFileError, match=r"vectors of size 32.*give the model's config \(--config\)"):
        convert_main([*args, "--output", str(tmp_path / "ti.pt")])  # width 32: no family to guess
    assert convert_main([*args, "--output", str(tmp_path / "ti.pt"), "--config", str(SD_CONFIG)]) == 0
    back = ei.read_embeddings(tmp_path / "ti.pt")
    assert back.tokens == {"sks": CLIP_SKS} and passes_a1111_check(tmp_path / "ti.pt")
    save_file({"emb_params": _vectors(768)}, str(tmp_path / "wide.safetensors"))
    wide = ["--input", str(tmp_path / "wide.safetensors"), "--output", str(tmp_path / "w.pt")]
    with pytest.raises(ei.EmbeddingFileError, match="size 768.*needs size 32"):
        convert_main([*wide, "--config", str(SD_CONFIG)])


def test_convert_into_a_missing_folder_is_a_clear_error(tmp_path, caplog):
    from scripts.convert_embedding import main as convert_main

    ei.write_embeddings(ei.Embeddings({"*": _vectors(768)}, {"*": CLIP_STAR}), tmp_path / "e.pt", "ti")
    target = tmp_path / "no" / "such" / "folder" / "out.safetensors"
    with pytest.raises(ei.EmbeddingFileError, match=f"the folder '{re.escape(str(target.parent))}' does not exist"):
        convert_main(["--input", str(tmp_path / "e.pt"), "--output", str(target), "--to", "a1111"])
    assert not (tmp_path / "no").exists()


def test_merge_with_the_models_config(tmp_path):
    from scripts.merge_embeddings import main as merge_main

    for i, key in enumerate(("sks", "*")):
        torch.save({key: _vectors(seed=i)[0]}, tmp_path / f"{i}.bin")
    inputs = ["--manager_ckpts", str(tmp_path / "0.bin"), str(tmp_path / "1.bin"), "--config", str(SD_CONFIG)]
    assert merge_main([*inputs, "--output_path", str(tmp_path / "m.pt")]) == 0
    assert ei.read_embeddings(tmp_path / "m.pt").tokens == {"sks": CLIP_SKS, "*": CLIP_STAR}


# ---------------------------------------------------------------- the text encoder's family, not the width


def test_an_embedding_of_another_text_encoder_is_refused_at_the_same_width(tmp_path):
    """The tiny LDM (BERT) and the tiny SD (CLIP) are both 32 wide: the file records the family it was learned with,
    and loading, converting or merging it for the other family is refused naming both."""
    from ldm import inference

    require_fixture(GOLDEN_WEIGHTS["ldm"])
    require_fixture(GOLDEN_WEIGHTS["sd"])
    bert = inference.load_model(REPO / "configs/tests/golden_tiny_ldm.yaml", GOLDEN_WEIGHTS["ldm"])
    clip = inference.load_model(SD_CONFIG, GOLDEN_WEIGHTS["sd"])
    assert bert.embedding_manager.token_dim == clip.embedding_manager.token_dim == 32
    refused = (r"were learned for LDM text2img-large \(BERT text encoder\); this model is SD v1 \(CLIP ViT-L/14 "
               r"text encoder\)\. .*even at the same size \(32\)")  # fmt: skip
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"bert{suffix}"
        bert.embedding_manager.save(path)
        assert ei.read_embeddings(path).family == "ldm"
        with pytest.raises(ei.EmbeddingFileError, match=refused):
            clip.embedding_manager.load(path)
        with pytest.raises(ei.EmbeddingFileError, match=refused):
            ei.load_into_manager(clip.embedding_manager, path)
    assert passes_a1111_check(tmp_path / "bert.pt")  # the recorded family is a plain string
    from scripts.convert_embedding import main as convert_main
    from scripts.merge_embeddings import main as merge_main

    with pytest.raises(ei.EmbeddingFileError, match=refused):
        convert_main(["--input", str(tmp_path / "bert.pt"), "--output", str(tmp_path / "c.pt"), "--config",
                      str(SD_CONFIG)])  # fmt: skip
    with pytest.raises(ei.EmbeddingFileError, match=refused):
        merge_main(["--manager_ckpts", str(tmp_path / "bert.pt"), "--config", str(SD_CONFIG), "--output_path",
                    str(tmp_path / "m.pt")])  # fmt: skip
    # The family goes along through conversion; a file that records none (a foreign one) is judged by size alone.
    assert convert_main(["--input", str(tmp_path / "bert.safetensors"), "--output", str(tmp_path / "a.safetensors"),
                         "--to", "a1111"]) == 0  # fmt: skip
    assert ei.read_embeddings(tmp_path / "a.safetensors").family == "ldm"
    save_file({"emb_params": _vectors(32)}, str(tmp_path / "foreign.safetensors"))
    clip.embedding_manager.load(tmp_path / "foreign.safetensors")
    assert ei.manager_embeddings(clip.embedding_manager).family == "sd1"
