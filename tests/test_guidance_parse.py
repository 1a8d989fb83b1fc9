"""The shared prompt parser (ldm/guidance/parse.py): words from every tokenizer's tokens, the rule parser, --g_pairs."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES

from ldm.errors import UserError
from ldm.guidance.parse import (
    NounPhrase,
    Word,
    bindings,
    noun_phrases,
    noun_phrases_from_doc,
    prompt_words,
    resolve_pairs,
)


def clip_table(*tokens: str) -> list[tuple[int, str]]:
    return list(enumerate(["<|startoftext|>", *tokens, "<|endoftext|>"]))


def bert_table(*tokens: str) -> list[tuple[int, str]]:
    return list(enumerate(["[CLS]", *tokens, "[SEP]"]))


def as_pairs(phrases: list[NounPhrase]) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.noun.text, tuple(m.text for m in p.modifiers)) for p in phrases]


def parse(table) -> list[tuple[str, tuple[str, ...]]]:
    return as_pairs(noun_phrases(prompt_words(table)))


def test_words_from_clip_bert_and_placeholder_tokens():
    words = prompt_words(clip_table("a</w>", "chec", "kered</w>", "bowl</w>"))
    assert words == [Word("a", (1,)), Word("checkered", (2, 3)), Word("bowl", (4,))]
    assert prompt_words(bert_table("a", "check", "##ered", "*")) == [
        Word("a", (1,)), Word("checkered", (2, 3)), Word("*", (4,))
    ]  # fmt: skip
    # a multi-vector placeholder shows its string at each of its positions: one word; "*</w>" is the plain token
    words = prompt_words(clip_table("a</w>", "*", "*", "*", "and</w>", "*</w>"))
    assert [w.positions for w in words] == [(1,), (2, 3, 4), (5,), (6,)]
    assert prompt_words([(0, "<start_of_text>"), (1, "red</w>"), (2, "<end_of_text>")]) == [Word("red", (1,))]


@pytest.mark.parametrize(
    "tokens, expected",
    [
        ("a red circle and a blue square", [("circle", ("red",)), ("square", ("blue",))]),
        ("a * and a green triangle", [("*", ()), ("triangle", ("green",))]),
        ("a circle with a red square", [("circle", ()), ("square", ("red",))]),
        ("a photo of a red circle next to a blue square",
         [("photo", ()), ("circle", ("red",)), ("square", ("blue",))]),
        ("a red circle , a blue square and a green *",
         [("circle", ("red",)), ("square", ("blue",)), ("*", ("green",))]),
        ("a checkered bowl on a red and blue table", [("bowl", ("checkered",)), ("table", ("red", "blue"))]),
        ("a dog that is red and blue", [("dog", ("red", "blue"))]),
        ("an image of a red object", [("image", ()), ("object", ("red",))]),
        ("a red *", [("*", ("red",))]),
    ],
)  # fmt: skip
def test_rule_parser(tokens, expected):
    assert parse(bert_table(*tokens.split())) == expected
    assert parse(clip_table(*(t + "</w>" for t in tokens.split()))) == expected


def test_bindings_keep_bare_nouns_only_with_entities():
    phrases = noun_phrases(prompt_words(bert_table(*"a circle with a red square".split())))
    assert as_pairs(bindings(phrases)) == [("square", ("red",))]
    assert as_pairs(bindings(phrases, include_entities=True)) == [("circle", ()), ("square", ("red",))]


def test_rule_parser_agrees_with_the_official_parse_of_the_golden_prompts():
    log = json.loads((FIXTURES / "guidance" / "syngen" / "log.json").read_text())
    for run in log["runs"].values():
        words = prompt_words(list(enumerate(run["tokens"])))
        ours = bindings(noun_phrases(words), include_entities=run["include_entities"])
        flat = [sorted(p for w in (ph.noun, *ph.modifiers) for p in w.positions) for ph in ours]
        official = [sorted(p for x in s for p in (x if isinstance(x, list) else [x])) for s in run["subtrees_indices"]]
        assert sorted(flat) == sorted(official), run["prompt"]


def test_resolve_pairs_words_positions_and_repeats():
    words = prompt_words(clip_table(*(t + "</w>" for t in "a red cat and a red dog".split())))
    assert as_pairs(resolve_pairs("red:cat, red:dog", words)) == [("cat", ("red",)), ("dog", ("red",))]
    assert [(p.noun.positions, p.modifiers[0].positions) for p in resolve_pairs("red:cat,red:dog", words)] == [
        ((3,), (2,)), ((7,), (6,))
    ]  # fmt: skip
    grouped = resolve_pairs("2:3,6:3", words)
    assert [(p.noun.positions, [m.positions for m in p.modifiers]) for p in grouped] == [((3,), [(2,), (6,)])]
    words = prompt_words(clip_table("a</w>", "chec", "kered</w>", "*", "*"))
    assert resolve_pairs("checkered:*", words) == [NounPhrase(Word("*", (4, 5)), (Word("checkered", (2, 3)),))]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("red:circle", "'circle' is not a word of the prompt"),
        ("red", "not a modifier:noun pair"),
        ("red:cat:dog", "not a modifier:noun pair"),
        ("9:3", "position 9 is not a word"),
        ("cat:cat", "names one word twice"),
    ],
)
def test_resolve_pairs_errors_name_the_flag_and_list_the_words(spec, message):
    words = prompt_words(clip_table(*(t + "</w>" for t in "a red cat".split())))
    with pytest.raises(UserError, match=message) as err:
        resolve_pairs(spec, words)
    assert str(err.value).startswith("--g_pairs: ") and "red (2)" in str(err.value)


class FakeToken:
    """The few attributes of a spaCy token the parse reads."""

    def __init__(self, text: str, pos: str, dep: str) -> None:
        self.text, self.pos_, self.dep_, self.children = text, pos, dep, []


def fake_doc(parse: list[tuple[str, str, str, int]]) -> list[FakeToken]:
    tokens = [FakeToken(w, pos, dep) for w, pos, dep, _ in parse]
    for tok, (_, _, _, head) in zip(tokens, parse):
        if tokens[head] is not tok:
            tokens[head].children.append(tok)
    return tokens


def test_phrases_from_a_spacy_style_parse():
    parse = [("a", "DET", "det", 2), ("checkered", "ADJ", "amod", 2), ("bowl", "NOUN", "ROOT", 2),
             ("on", "ADP", "prep", 2), ("a", "DET", "det", 8), ("red", "ADJ", "amod", 8), ("and", "CCONJ", "cc", 5),
             ("blue", "ADJ", "conj", 5), ("table", "NOUN", "pobj", 3)]  # fmt: skip
    words = prompt_words(
        clip_table(*"a</w> chec kered</w> bowl</w> on</w> a</w> red</w> and</w> blue</w> table</w>".split())
    )
    phrases = noun_phrases_from_doc(fake_doc(parse), words)
    assert [(p.noun.text, sorted(m.text for m in p.modifiers)) for p in phrases] == [
        ("bowl", ["checkered"]), ("table", ["blue", "red"])
    ]  # fmt: skip
