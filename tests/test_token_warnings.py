"""Issue 11, section 3: tokens and prompts say what they do.

- an A&E word the tokenizer does not know is an error naming it (it used to excite any other unknown word);
- a truncated prompt and parts that become ``[UNK]`` are logged once per prompt;
- a placeholder string that is a vocabulary word warns that it takes the word over.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import GOLDEN_WEIGHTS, REPO, _golden_model, require_fixture

from ldm.errors import UserError
from ldm.models.diffusion.guidance.tokens import resolve_ae_tokens
from ldm.modules.embedding_manager import EmbeddingManager
from ldm.modules.encoders.modules import BERTEmbedder, BERTTokenizer
from ldm.toyworld.scenes import DEFAULT_COLOURS, NAMED_SHAPES

TOY_VOCAB = REPO / "configs" / "toyworld" / "vocab.txt"
ENCODER_LOG = "ldm.modules.encoders.modules"


@pytest.fixture(scope="module")
def toy_encoder() -> BERTEmbedder:
    """The ToyWorld text encoder's tokenizer (its 29-word vocabulary) on a tiny random transformer."""
    torch.manual_seed(0)
    return BERTEmbedder(n_embed=16, n_layer=1, vocab_size=29, max_seq_len=32, vocab_file=TOY_VOCAB).eval()


def _ids(encoder, prompt: str) -> list[int]:
    return encoder.tokenize([prompt])[0].tolist()


def test_unknown_ae_word_is_an_error_naming_it(toy_encoder):
    tok = toy_encoder.tokenizer
    ids = _ids(toy_encoder, "a dog and a red circle")  # "dog" is [UNK] in the toy vocabulary, as "cat" is
    with pytest.raises(UserError) as info:
        resolve_ae_tokens("cat", ids, tok)
    message = str(info.value)
    assert "--ae_tokens: 'cat' is not in the tokenizer's vocabulary (it maps to [UNK])" in message
    assert "2: [UNK]" in message and "5: red" in message  # the prompt's token table
    assert "the vocabulary is: *, ,, ., @, a, an, and, blue, circle" in message  # a small vocabulary is listed
    assert "[PAD]" not in message.split("the vocabulary is:")[1].split(".")[0]
    assert resolve_ae_tokens("circle,2", ids, tok) == ((6,), (2,))  # known words and positions still work


def test_unknown_word_in_a_prompt_of_the_shipped_model():
    """Through the sampling code (txt2img, the evaluation scripts) on the shipped ToyWorld model."""
    from ldm import inference

    model = inference.load_model(REPO / "configs/toyworld/txt2img-inference.yaml",
                                 REPO / "models/toyworld/txt2img.safetensors")  # fmt: skip
    with pytest.raises(UserError, match="'cat' is not in the tokenizer's vocabulary"):
        inference.resolve_batch_tokens(model, ["a red circle and a cat"], "circle,cat")
    groups, _, _ = inference.resolve_batch_tokens(model, ["a red circle and a blue square"], "circle,square")
    assert groups == [((3,), (7,))]


def test_toyworld_evaluation_words_are_all_known(toy_encoder):
    """The words scripts/evaluate_toyworld.py excites resolve without [UNK]."""
    for colour in DEFAULT_COLOURS:
        for shape in NAMED_SHAPES:
            ids = _ids(toy_encoder, f"a {colour} {shape} and a photo of *")
            assert resolve_ae_tokens(f"{colour},{shape},*", ids, toy_encoder.tokenizer) == ((2,), (3,), (8,))


def test_evaluate_attend_excite_object_words_are_checked(toy_encoder):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("script_eval_ae", REPO / "scripts/evaluate_attend_excite.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    prompt = "a red circle and a cat"
    spec_words = script.object_words(prompt)
    assert spec_words == ["circle", "cat"]
    with pytest.raises(UserError, match="'cat' is not in the tokenizer's vocabulary"):
        resolve_ae_tokens(",".join(spec_words), _ids(toy_encoder, prompt), toy_encoder.tokenizer)


def test_clip_has_no_unknown_token_false_alarm():
    """CLIP's unknown token is its end token; byte-level BPE never produces it for a word."""
    require_fixture(GOLDEN_WEIGHTS["sd"])
    encoder = _golden_model("sd").cond_stage_model
    ids = encoder.tokenize(["a cat and a \U0001f431"])[0].tolist()
    assert resolve_ae_tokens("cat", ids, encoder.tokenizer) == ((2,),)


# ---------------------------------------------------------------------------------------------- prompt warnings


def test_truncated_bert_prompt_warns_once_with_the_count(toy_encoder, caplog):
    prompt = " ".join(["red"] * 40)  # [CLS] + 40 words + [SEP] = 42 tokens; the toy encoder keeps 32
    with caplog.at_level(logging.WARNING, logger=ENCODER_LOG):
        first = toy_encoder.encode([prompt, prompt])
        second = toy_encoder.encode([prompt])  # later steps of the same prompt: no new warning
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warnings == [f"Prompt {prompt!r} is 42 tokens long; the text encoder keeps 32, so the last 10 tokens are "
                        "dropped"]  # fmt: skip
    assert torch.equal(first[:1], second)  # logging only: the conditioning is what it was
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ENCODER_LOG):
        toy_encoder.encode([" ".join(["red"] * 30)])  # 32 tokens: fits
    assert not caplog.records


def test_truncated_clip_prompt_warns_with_the_count(caplog):
    require_fixture(GOLDEN_WEIGHTS["sd"])
    encoder = _golden_model("sd").cond_stage_model
    prompt = " ".join(["cat"] * 100)  # <|startoftext|> + 100 + <|endoftext|> = 102 tokens; CLIP keeps 77
    with caplog.at_level(logging.WARNING, logger=ENCODER_LOG):
        encoder.tokenize([prompt])
    assert "is 102 tokens long; the text encoder keeps 77, so the last 25 tokens are dropped" in caplog.text


def test_unknown_characters_warn(toy_encoder, caplog):
    with caplog.at_level(logging.WARNING, logger=ENCODER_LOG):
        toy_encoder.tokenize(["a red circle and a \U0001f431 cat"])
    assert "2 part(s) ('\U0001f431', 'cat') are not in the tokenizer's vocabulary and become [UNK]" in caplog.text
    caplog.clear()
    bert = BERTTokenizer(vq_interface=False)  # the bundled bert-base-uncased vocabulary (LDM text2img-large)
    with caplog.at_level(logging.WARNING, logger=ENCODER_LOG):
        from ldm.modules.encoders.modules import warn_prompt_problems

        warn_prompt_problems(bert.tokenizer, ["a cat \U0001f431 on a mat"], 77)
        warn_prompt_problems(bert.tokenizer, ["a cat on a mat"], 77)
    assert "1 part(s) ('\U0001f431')" in caplog.text and caplog.text.count("WARNING") == 1


# ------------------------------------------------------------------------------------------------- placeholders


def test_placeholder_that_is_a_word_warns(toy_encoder, caplog):
    with caplog.at_level(logging.WARNING, logger="ldm.modules.embedding_manager"):
        EmbeddingManager(toy_encoder, ["circle"], ["object"])
    assert "Placeholder string 'circle' is a word of the text encoder's vocabulary: it takes that word over" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldm.modules.embedding_manager"):
        EmbeddingManager(toy_encoder, ["*"], ["object"])
    assert not caplog.records


def test_main_placeholder_string_flag_warns(tmp_path, caplog):
    """main.py --placeholder_string reaches the embedding manager, which warns."""
    from omegaconf import OmegaConf

    import main
    from ldm.util import instantiate_from_config

    opt, _ = main.get_parser().parse_known_args(["--placeholder_string", "red"])
    config = OmegaConf.load(REPO / "configs/toyworld/finetune.yaml")
    main.apply_inversion_flags(config, opt)
    personal = config.model.params.personalization_config
    with caplog.at_level(logging.WARNING, logger="ldm.modules.embedding_manager"):
        toy = BERTEmbedder(n_embed=16, n_layer=1, vocab_size=29, max_seq_len=32, vocab_file=TOY_VOCAB)
        instantiate_from_config(personal, embedder=toy)
    assert "'red' is a word of the text encoder's vocabulary" in caplog.text
