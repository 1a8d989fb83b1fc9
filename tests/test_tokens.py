"""--ae_tokens lookup for the BERT and the CLIP tokenizer, with plain words, placeholders and multi-vector ones."""

from __future__ import annotations

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, _golden_model, require_fixture

from ldm.models.diffusion.guidance.tokens import (
    describe_groups,
    end_position,
    format_token_table,
    resolve_ae_tokens,
    token_table,
)
from ldm.modules.embedding_manager import EmbeddingManager


@pytest.fixture(params=["ldm", "sd"])
def encoder(request):
    require_fixture(GOLDEN_WEIGHTS[request.param])
    return _golden_model(request.param).cond_stage_model


def spliced(encoder, prompt: str, num_vectors: int):
    manager = EmbeddingManager(encoder, ["*"], ["dog"], num_vectors_per_token=num_vectors)
    ids = encoder.tokenize([prompt])
    with torch.no_grad():
        ids, _ = manager(ids, encoder.token_embedding(ids))
    return ids[0].tolist(), {int(manager.string_to_token_dict["*"]): "*"}


def test_plain_prompt_words_and_indices(encoder):
    ids = encoder.tokenize(["a cat and a frog"])[0].tolist()
    tok = encoder.tokenizer
    table = token_table(ids, tok)
    assert [p for p, _ in table] == list(range(7)) and end_position(ids, tok) == 6
    assert resolve_ae_tokens("cat,frog", ids, tok) == ((2,), (5,))
    assert resolve_ae_tokens("2, frog", ids, tok) == resolve_ae_tokens([2, 5], ids, tok) == ((2,), (5,))
    assert resolve_ae_tokens("", ids, tok) == ()


def test_multi_subtoken_word_is_one_group(encoder):
    ids = encoder.tokenize(["a photo of a hedgehogzz"])[0].tolist()
    tok = encoder.tokenizer
    pieces = tok(["hedgehogzz"], add_special_tokens=False)["input_ids"][0]
    assert len(pieces) > 1
    (group,) = resolve_ae_tokens("hedgehogzz", ids, tok)
    assert group == tuple(range(5, 5 + len(pieces)))
    assert [ids[p] for p in group] == pieces


@pytest.mark.parametrize("num_vectors", [1, 3])
def test_placeholder_and_later_indices_shift(encoder, num_vectors: int):
    ids, placeholders = spliced(encoder, "a photo of * and a dog", num_vectors)
    tok = encoder.tokenizer
    groups = resolve_ae_tokens("*,dog", ids, tok, placeholders)
    assert groups == (tuple(range(4, 4 + num_vectors)), (6 + num_vectors,))
    table = token_table(ids, tok, placeholders)
    assert [t for p, t in table if p in groups[0]] == ["*"] * num_vectors
    assert describe_groups(groups, table).startswith("4" if num_vectors == 1 else f"4-{3 + num_vectors} (*)")


def test_errors_show_the_table(encoder):
    ids = encoder.tokenize(["a cat and a frog"])[0].tolist()
    tok = encoder.tokenizer
    table = format_token_table(token_table(ids, tok))
    with pytest.raises(ValueError, match="not in the prompt") as err:
        resolve_ae_tokens("dog", ids, tok)
    assert table in str(err.value)
    for bad in ("0", "6", "40"):
        with pytest.raises(ValueError, match="outside the prompt's tokens 1..5"):
            resolve_ae_tokens(bad, ids, tok)
