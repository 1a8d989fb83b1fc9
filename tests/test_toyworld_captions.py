"""ToyWorld caption noise (over-/under-description) and the CLIP BPE tokenization of the ToyWorld words."""

from __future__ import annotations

import hashlib
import itertools
import math

import pytest

from ldm.toyworld.dataset import ToyWorldDataset
from ldm.toyworld.detect import parse_caption
from ldm.toyworld.scenes import VOCAB_PATH

N = 3000

# sha256 of the first 3000 training captions ("\n"-joined) and the first captions, computed with the caption code
# (now ldm/toyworld/scenes.py) as it was before the caption-noise knobs existed (commit fc6f0e6): phase-1
# parameters, then phase-2 parameters.
GOLDEN = [
    (
        {},
        "4221be578391e35881fadf522335823be1e36f2f9eab09501feaf0bf373fd3bf",
        ["a green triangle, a yellow circle and a triangle", "a green object, a green triangle and a yellow square"],
    ),
    (
        {"seed": 1, "generic_prob": 0.05, "heldout_prob": 0.15},
        "16184b5c262a120f80805310e5352a4cf44195042c1f83f971168f248035f312",
        ["a blue triangle and a red triangle", "a yellow triangle, a blue circle and a yellow square"],
    ),
]


def _captions(ds: ToyWorldDataset, n: int = N) -> list[tuple[tuple, str]]:
    """(scene objects as (colour, shape) pairs, caption) for the first ``n`` items."""
    out = []
    for i in range(n):
        spec = ds.spec(i)
        out.append((tuple((o.colour, o.shape) for o in spec.objects), ds.caption(spec, i)))
    return out


def _binomial_ok(k: int, n: int, p: float) -> bool:
    """``k`` successes in ``n`` draws is within 4.5 standard deviations (+1) of ``n p``."""
    return abs(k - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1


def _phrase_fits(phrase: tuple[str | None, str], obj: tuple[str, str]) -> bool:
    colour, shape = phrase
    return (colour is None or colour == obj[0]) and (shape == "object" or shape == obj[1])


def _describes(phrases: list, objects: list) -> bool:
    """Each phrase names a distinct object and every object is named (a one-to-one fit)."""
    if len(phrases) != len(objects):
        return False
    return any(all(_phrase_fits(p, objects[j]) for p, j in zip(phrases, perm)) for perm in
               itertools.permutations(range(len(objects))))  # fmt: skip


@pytest.mark.parametrize(("params", "digest", "first"), GOLDEN)
def test_zero_noise_reproduces_the_shipped_captions(params, digest, first):
    for noise in ({}, {"p_over_describe": 0.0, "p_under_describe": 0.0}):
        caps = [c for _, c in _captions(ToyWorldDataset(num_samples=N, **params, **noise))]
        assert caps[:2] == first
        assert hashlib.sha256("\n".join(caps).encode()).hexdigest() == digest


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_noise_rates_match_p(p):
    base = _captions(ToyWorldDataset(num_samples=N))
    over = _captions(ToyWorldDataset(num_samples=N, p_over_describe=p))
    under = _captions(ToyWorldDataset(num_samples=N, p_under_describe=p))
    n_over = sum(len(parse_caption(c)) == len(objs) + 1 for objs, c in over)
    assert _binomial_ok(n_over, N, p), (n_over, N, p)
    eligible = [(objs, c) for objs, c in under if len(objs) >= 2]
    n_under = sum(len(parse_caption(c)) == len(objs) - 1 for objs, c in eligible)
    assert len(eligible) > N // 2 and _binomial_ok(n_under, len(eligible), p), (n_under, len(eligible), p)
    # single-object scenes are never left without a subject
    assert all(c == b for (objs, c), (_, b) in zip(under, base, strict=True) if len(objs) == 1)


def test_over_described_caption_names_an_absent_subject():
    ds = ToyWorldDataset(num_samples=400, p_over_describe=1.0)
    for objs, caption in _captions(ds, 400):
        phrases = parse_caption(caption)
        assert len(phrases) == len(objs) + 1, caption
        present_shapes = {s for _, s in objs}
        phantoms = [(c, s) for c, s in phrases if s != "object" and s not in present_shapes]
        assert len(phantoms) == 1, (objs, caption)
        colour, shape = phantoms[0]
        assert colour in ds.colours and (colour, shape) not in objs
        rest = list(phrases)
        rest.remove(phantoms[0])
        assert _describes(rest, list(objs)), (objs, caption)


def test_under_described_caption_omits_exactly_one_present_object():
    ds = ToyWorldDataset(num_samples=400, p_under_describe=1.0)
    multi = 0
    for objs, caption in _captions(ds, 400):
        phrases = parse_caption(caption)
        if len(objs) < 2:
            assert len(phrases) == 1
            continue
        multi += 1
        assert len(phrases) == len(objs) - 1, (objs, caption)
        assert any(_describes(phrases, [o for k, o in enumerate(objs) if k != j]) for j in range(len(objs)))
    assert multi > 200


def test_noise_is_deterministic_and_validated():
    a = _captions(ToyWorldDataset(num_samples=200, p_over_describe=0.3, p_under_describe=0.3), 200)
    b = _captions(ToyWorldDataset(num_samples=200, p_over_describe=0.3, p_under_describe=0.3), 200)
    assert a == b and a != _captions(ToyWorldDataset(num_samples=200), 200)
    for name in ("p_over_describe", "p_under_describe"):
        with pytest.raises(ValueError, match=name):
            ToyWorldDataset(num_samples=2, **{name: 1.5})


def test_toyworld_words_are_single_clip_tokens():
    """Every ToyWorld caption word (vocab.txt without the BERT specials) and the held-out shape names are one token
    of the shipped CLIP BPE tokenizer (the FrozenCLIPEmbedder's)."""
    from transformers import CLIPTokenizer

    from ldm.modules.encoders.modules import CLIP_MERGES_FILE, CLIP_VOCAB_FILE

    tok = CLIPTokenizer(str(CLIP_VOCAB_FILE), str(CLIP_MERGES_FILE))
    words = [w for w in VOCAB_PATH.read_text().split() if not (w.startswith("[") and w.endswith("]"))]
    assert {"circle", "square", "triangle", "diamond", "red", "object", "*", ","} <= set(words)
    split = {w: tok.tokenize(w) for w in [*words, "star", "heart"] if len(tok.tokenize(w)) != 1}
    assert split == {}, f"ToyWorld words that are not one CLIP token: {split}"
    ids = tok("a red circle and a blue square")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 9
