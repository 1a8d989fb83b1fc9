"""Text encoders: manifest keys, bundled tokenizer files, known ids and the goldens' text outputs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache

import pytest
import torch

from ldm.modules.embedding_manager import EmbeddingManager
from ldm.modules.encoders.modules import (
    BERT_VOCAB_FILE,
    CLIP_MERGES_FILE,
    CLIP_VOCAB_FILE,
    TOKENIZER_DIR,
    BERTEmbedder,
    FrozenCLIPEmbedder,
)
from ldm.modules.x_transformer import Encoder, TransformerWrapper
from tests.conftest import FIXTURES, GOLDEN, REPO, load_golden, rel_err, require_fixture

PREFIX = "cond_stage_model."
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)  # golden README
TOL = 1e-5


def manifest_section(manifest: str, prefix: str) -> dict[str, list[int]]:
    keys = json.loads(require_fixture(FIXTURES / manifest).read_text())["keys"]
    return {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)}


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_bert_embedder_state_dict_matches_manifest() -> None:
    with torch.device("meta"):
        model = BERTEmbedder(n_embed=1280, n_layer=32)
    assert shapes(model) == manifest_section("ldm_txt2img_1p4B_state_dict.json", PREFIX)


def test_clip_embedder_state_dict_matches_manifest() -> None:
    with torch.device("meta"):
        model = FrozenCLIPEmbedder()
    assert shapes(model) == manifest_section("sd_v1_state_dict.json", PREFIX)
    assert model.embedding_dim == 768 and model.max_length == 77


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tokenizer_files_are_the_expected_ones() -> None:
    assert sha256(BERT_VOCAB_FILE) == "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    gz = TOKENIZER_DIR / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    assert sha256(gz) == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    script_path = REPO / "scripts" / "build_tokenizer_files.py"
    spec = importlib.util.spec_from_file_location("build_tokenizer_files", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    vocab_text, merges_text = script.clip_file_texts(gz)
    assert CLIP_VOCAB_FILE.read_text(encoding="utf-8") == vocab_text
    assert CLIP_MERGES_FILE.read_text(encoding="utf-8") == merges_text
    assert len(json.loads(vocab_text)) == 49408


@lru_cache(maxsize=1)
def tiny_clip() -> FrozenCLIPEmbedder:
    torch.manual_seed(0)
    return FrozenCLIPEmbedder(**CLIP_TINY).eval()


@lru_cache(maxsize=1)
def tiny_bert() -> BERTEmbedder:
    torch.manual_seed(0)
    return BERTEmbedder(n_embed=32, n_layer=2).eval()


def test_known_token_ids() -> None:
    clip, bert = tiny_clip(), tiny_bert()
    assert clip.tokenize(["a photo of a cat"])[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]
    assert clip.single_token_id("*") == 265 and clip.single_token_id("sculpture") == 8757
    ids = bert.tokenize("a photo of *")
    assert ids.shape == (1, 77) and ids[0, :7].tolist() == [101, 1037, 6302, 1997, 1008, 102, 0]
    assert bert.single_token_id("*") == 1008 and bert.single_token_id("sculpture") == 6743
    for encoder in (clip, bert):
        with pytest.raises(ValueError, match="photo.*gram"):
            encoder.single_token_id("photogrammetry")


def test_clip_text_cleaning_unescapes_html_twice() -> None:
    clip = tiny_clip()
    assert torch.equal(clip.tokenize("a &amp;amp; b\n\t c "), clip.tokenize("a & b c"))


def test_missing_tokenizer_file_names_the_config_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cond_stage_config.params.vocab_file"):
        BERTEmbedder(n_embed=32, n_layer=1, vocab_file=tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="merges_file"):
        FrozenCLIPEmbedder(**CLIP_TINY, merges_file=tmp_path / "merges.txt")


def test_transformer_wrapper_logits_and_padding_mask() -> None:
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=50, max_seq_len=8, attn_layers=Encoder(dim=16, depth=1, heads=2)).eval()
    ids = torch.randint(0, 50, (2, 8))
    assert model(ids).shape == (2, 8, 50)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    masked = model(ids, return_embeddings=True, mask=mask)
    changed = ids.clone()
    changed[:, 6] = (ids[:, 6] + 1) % 50  # a masked-out token must not affect the kept positions
    assert torch.allclose(masked[:, :5], model(changed, return_embeddings=True, mask=mask)[:, :5], atol=1e-6)


def golden_cond_stage(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from omegaconf import OmegaConf

    from ldm.util import load_state_dict_file

    config = OmegaConf.load(require_fixture(GOLDEN / "configs" / f"tiny_{name}.yaml")).model.params
    if name == "sd":
        model = FrozenCLIPEmbedder(**CLIP_TINY)
    else:
        model = BERTEmbedder(**config.cond_stage_config.params)
    weights = "tiny_sd.ckpt" if name == "sd" else "tiny_ldm.safetensors"
    state = load_state_dict_file(require_fixture(GOLDEN / "weights" / weights))
    model.load_state_dict({k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True)
    return model.eval(), state


@pytest.mark.parametrize("name", ["sd", "ldm"])
def test_text_goldens(name: str) -> None:
    from omegaconf import OmegaConf

    model, state = golden_cond_stage(name)
    inputs = load_golden(f"tiny_{name}", "inputs.safetensors")
    golden = load_golden(f"tiny_{name}", "text.safetensors")
    settings = json.loads((GOLDEN / "settings.json").read_text())["set"]["models"][f"tiny_{name}"]["text"]
    config = OmegaConf.load(GOLDEN / "configs" / f"tiny_{name}.yaml").model.params.personalization_config.params
    ids = inputs["text_ids"]

    # the checkpoint's manager: '*' -> text_v (1 vector), built from the config and loaded from the weights
    manager = EmbeddingManager(model, **OmegaConf.to_container(config))
    prefix = "embedding_manager."
    manager.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    assert int(manager.string_to_token_dict["*"]) == int(inputs["text_placeholder_id"])
    assert torch.equal(manager.string_to_param_dict["*"].detach(), inputs["text_v"])

    multi = EmbeddingManager(model, ["*"], num_vectors_per_token=settings["multivec_num_vectors"])
    with torch.no_grad():
        multi.string_to_param_dict["*"].copy_(inputs["text_v_multi"])
        ids_after, _ = multi(ids, model.token_embedding(ids))
        assert torch.equal(ids_after, golden["ids_after_multivec"])
        assert rel_err(model.encode_ids(ids), golden["out_plain"]) < TOL
        assert rel_err(model.encode_ids(ids, manager), golden["out_subst"]) < TOL
        assert rel_err(model.encode_ids(ids, multi), golden["out_multivec"]) < TOL

        prompts = settings["prompts"]
        assert torch.equal(model.tokenize(prompts), golden["prompt_ids"])
        assert rel_err(model.encode(prompts, embedding_manager=manager), golden["prompt_cond"]) < TOL
        empty = [""] * len(prompts)
        assert torch.equal(model.tokenize(empty), golden["empty_ids"])
        assert rel_err(model(empty, embedding_manager=manager), golden["empty_cond"]) < TOL
