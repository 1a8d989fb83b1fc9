"""Which words of a prompt bind together: nouns and their modifiers, for the binding methods (SynGen, CONFORM).

Pure functions over the token strings of one prompt, as :func:`ldm.guidance.tokens.token_table` lists them
(``[(position, token string)]``, start and end token included), for every tokenizer of the project: CLIP BPE
(``red</w>``; a piece without ``</w>`` continues into the next one: ``chec kered</w>``), OpenCLIP (the same) and
WordPiece (``##`` continues the previous piece; ToyWorld 1's BERT tower). A placeholder string (``*``; a
multi-vector placeholder shows it at several consecutive positions) is one word and always a noun.

- :func:`prompt_words`: the prompt's words, each with its positions.
- :func:`noun_phrases`: the built-in rule parser. The prompt is cut into phrases at function words (articles,
  numbers, prepositions such as "of", "with", "next to", conjunctions, copulas) and punctuation; in each phrase the
  last content word is the noun and the words before it are its modifiers (adjective-before-noun: "a checkered
  bowl", "a red *"). A phrase of known adjectives alone modifies the next noun when a conjunction joins them
  ("a red and blue table": red, blue -> table), else the previous noun across a copula ("a dog that is red").
  "X with Y" / "X next to Y" are two phrases, so "a circle with a red square" binds red to square only.
- :func:`resolve_pairs`: the explicit ``--g_pairs`` spec ("red:circle,blue:square" or 1-based positions "2:3").
- :func:`noun_phrases_from_doc`: the same structure from a spaCy parse (the optional ``spacy`` extra), following the
  official SynGen rules (modifier dependencies of a noun and their conjuncts); :func:`prompt_phrases` picks the parser
  (spaCy when it and its model are installed, else the rules).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ldm.errors import UserError

logger = logging.getLogger(__name__)

PLACEHOLDERS: tuple[str, ...] = ("*",)

_SPECIAL = re.compile(r"^(<\|.*\|>|\[[A-Z]+\]|<(start|end)_of_text>)$")
_PUNCT = re.compile(r"^[^\w*]+$")

DETERMINERS = frozenset(
    "a an the this that these those some any each every no its his her their my your our one two three four five six "
    "seven eight nine ten several many few both".split()
)
PREPOSITIONS = frozenset(
    "of with without on in into onto under over above below behind beside besides near next to at by from inside "
    "outside between among against around for atop beneath underneath across along through toward towards beyond "
    "upon like".split()
)
CONJUNCTIONS = frozenset("and or but nor &".split())
COPULAS = frozenset("is are was were be being been looks look seems that which who whose".split())
FUNCTION_WORDS = DETERMINERS | PREPOSITIONS | CONJUNCTIONS | COPULAS

# Adjectives the rule parser recognises in a phrase without a noun ("a red and blue table"); inside a phrase any
# word before the noun is a modifier, listed here or not. Shape words ("square", "round") are left out on purpose:
# ToyWorld's "a circle and a square" must keep "square" a noun.
ADJECTIVES = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey golden gold silver cyan magenta "
    "turquoise beige teal crimson maroon navy "
    "big small large tiny huge little tall short long wide narrow giant "
    "striped checkered spotted dotted wooden metal metallic glass plastic shiny fluffy furry hairy old new young "
    "bright dark light pale transparent colorful colourful".split()
)


@dataclass(frozen=True)
class Word:
    """One word of the prompt: its lower-case text (sub-tokens joined) and its positions in the token sequence."""

    text: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class NounPhrase:
    """A noun and the words that modify it (possibly none)."""

    noun: Word
    modifiers: tuple[Word, ...] = ()


def prompt_words(table: Sequence[tuple[int, str]], placeholders: Collection[str] = PLACEHOLDERS) -> list[Word]:
    """The words of a prompt from its token table ``[(position, token)]``; special tokens are skipped.

    A placeholder token (one of ``placeholders``, with or without ``</w>``) is a word of its own; a run of the same
    placeholder (a multi-vector placeholder) is one word.
    """
    clip_style = any(tok.endswith("</w>") for _, tok in table)
    words: list[tuple[str, list[int]]] = []
    open_word = False  # the last word continues (CLIP piece without </w>)
    last_placeholder: str | None = None
    for pos, tok in table:
        if _SPECIAL.match(tok):
            open_word, last_placeholder = False, None
            continue
        text = tok[: -len("</w>")] if tok.endswith("</w>") else tok
        if text in placeholders:
            if last_placeholder == text:
                words[-1][1].append(pos)
            else:
                words.append((text, [pos]))
            open_word, last_placeholder = False, text
            continue
        last_placeholder = None
        if words and (open_word or (not clip_style and text.startswith("##"))):
            prev_text, prev_pos = words[-1]
            words[-1] = (prev_text + text.removeprefix("##"), [*prev_pos, pos])
        else:
            words.append((text, [pos]))
        open_word = clip_style and not tok.endswith("</w>")
    return [Word(text.lower(), tuple(pos)) for text, pos in words]


def _kind(word: Word, placeholders: Collection[str]) -> str:
    if word.text in placeholders:
        return "placeholder"
    if _PUNCT.match(word.text):
        return "punct"
    if word.text in CONJUNCTIONS:
        return "conj"
    if word.text in FUNCTION_WORDS:
        return "function"
    return "content"


def noun_phrases(words: Sequence[Word], placeholders: Collection[str] = PLACEHOLDERS) -> list[NounPhrase]:
    """The rule parser (module docstring): every noun of the prompt with its modifiers, in prompt order."""
    # 1. phrases: runs of content words, cut at function words, punctuation and placeholders; remember what joined
    #    each phrase to the one before ("conj" when a conjunction or a comma did, "copula" for is/that/..., else "").
    phrases: list[tuple[list[Word], str]] = []
    current: list[Word] = []
    joint = ""
    for word in words:
        kind = _kind(word, placeholders)
        if kind == "content":
            current.append(word)
            continue
        if kind == "placeholder":  # a placeholder is a noun: it ends its phrase
            phrases.append(([*current, word], joint))
            current, joint = [], ""
            continue
        if current:
            phrases.append((current, joint))
            current, joint = [], ""
        if kind == "conj" or word.text == ",":
            joint = "conj"
        elif word.text in COPULAS and joint != "conj":
            joint = "copula"
    if current:
        phrases.append((current, joint))

    # 2. nouns and modifiers. A phrase of adjectives alone ("red" in "a red and blue table") is carried to the next
    #    noun when a conjunction follows it; a chain of them that began after a copula ("a dog that is red and
    #    blue") goes to the previous noun.
    result: list[NounPhrase] = []
    carried: list[Word] = []
    after_copula = False
    for i, (phrase, joined_by) in enumerate(phrases):
        adjectives_only = all(w.text in ADJECTIVES for w in phrase)
        if not carried:
            after_copula = joined_by == "copula"
        next_joint = phrases[i + 1][1] if i + 1 < len(phrases) else ""
        if adjectives_only and next_joint == "conj":
            carried.extend(phrase)
            continue
        if adjectives_only and after_copula and result:
            last = result[-1]
            result[-1] = NounPhrase(last.noun, (*last.modifiers, *carried, *phrase))
        else:
            result.append(NounPhrase(phrase[-1], (*carried, *phrase[:-1])))
        carried = []
    return result


def bindings(phrases: Iterable[NounPhrase], include_entities: bool = False) -> list[NounPhrase]:
    """The noun phrases a binding loss uses: those with modifiers (and, with ``include_entities``, bare nouns)."""
    return [p for p in phrases if p.modifiers or include_entities]


def resolve_pairs(spec: str, words: Sequence[Word], flag: str = "--g_pairs") -> list[NounPhrase]:
    """``"red:circle,blue:square"`` (words or 1-based positions, ``modifier:noun``) -> noun phrases.

    A word is matched by its text; where a word occurs more than once the pair takes the closest occurrences with the
    modifier before the noun. Pairs with the same noun make one phrase with several modifiers. A position picks that
    position alone (as ``--ae_tokens`` does). Raises :class:`UserError` naming the item and listing the words.
    """
    listing = ", ".join(f"{w.text} ({','.join(str(p) for p in w.positions)})" for w in words)

    def fail(message: str) -> UserError:
        return UserError(f"{flag}: {message}. Words of the prompt (positions): {listing}")

    def candidates(item: str) -> list[Word]:
        if item.isdigit():
            pos = int(item)
            for w in words:
                if pos in w.positions:
                    return [Word(w.text, (pos,))]
            raise fail(f"position {pos} is not a word of the prompt")
        found = [w for w in words if w.text == item.lower()]
        if not found:
            raise fail(f"'{item}' is not a word of the prompt")
        return found

    order: list[Word] = []
    modifiers: dict[Word, list[Word]] = {}
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        parts = [p.strip() for p in raw.split(":")]
        if len(parts) != 2 or not all(parts):
            raise fail(f"'{raw}' is not a modifier:noun pair (e.g. \"red:circle,blue:square\")")
        options = [(m, n) for m in candidates(parts[0]) for n in candidates(parts[1]) if m != n]
        if not options:
            raise fail(f"'{raw}' names one word twice")
        mod, noun = min(options, key=lambda mn: (mn[0].positions[0] > mn[1].positions[0],
                                                 abs(mn[0].positions[0] - mn[1].positions[0])))  # fmt: skip
        if noun not in modifiers:
            order.append(noun)
            modifiers[noun] = []
        if mod not in modifiers[noun]:
            modifiers[noun].append(mod)
    return [NounPhrase(noun, tuple(modifiers[noun])) for noun in order]


SPACY_MODIFIER_DEPS = frozenset({"amod", "nmod", "compound", "npadvmod", "advmod", "acomp"})


def noun_phrases_from_doc(
    doc: Iterable[Any], words: Sequence[Word], placeholders: Collection[str] = PLACEHOLDERS
) -> list[NounPhrase]:
    """Noun phrases from a spaCy parse of the prompt (tokens with ``text``, ``pos_``, ``dep_``, ``children``).

    As the official SynGen extraction: for each noun (``NOUN``/``PROPN``, or a placeholder) that is not itself a
    modifier, its children with a modifier dependency and, below them, their modifier or ``conj`` descendants.
    spaCy tokens are matched to the prompt's words in order by text; a token without a word is skipped.
    """
    tokens = list(doc)
    word_of: dict[int, Word] = {}
    cursor = 0
    for tok in tokens:
        text = str(tok.text).lower()
        for j in range(cursor, len(words)):
            if words[j].text == text:
                word_of[id(tok)], cursor = words[j], j + 1
                break

    def is_noun(tok: Any) -> bool:
        return tok.pos_ in ("NOUN", "PROPN") or str(tok.text) in placeholders

    result = []
    for tok in tokens:
        if not is_noun(tok) or tok.dep_ in SPACY_MODIFIER_DEPS or id(tok) not in word_of:
            continue
        found: list[Any] = []
        stack: list[Any] = []
        for child in tok.children:
            if child.dep_ in SPACY_MODIFIER_DEPS:
                found.append(child)
                stack.extend(child.children)
        while stack:
            node = stack.pop()
            if node.dep_ in SPACY_MODIFIER_DEPS or node.dep_ == "conj":
                found.append(node)
                stack.extend(node.children)
        mods = tuple(word_of[id(m)] for m in found if id(m) in word_of)
        result.append(NounPhrase(word_of[id(tok)], mods))
    return result


@functools.lru_cache(maxsize=4)
def load_spacy(model: str) -> Any | None:
    """The spaCy pipeline ``model``, or None when spaCy or that model is not installed (loaded once per process)."""
    try:
        import spacy
    except ImportError:
        return None
    try:
        return spacy.load(model)
    except OSError:  # spaCy's "can't find model"
        return None


def prompt_phrases(
    prompt: str,
    words: Sequence[Word],
    parser: str = "auto",
    spacy_model: str = "en_core_web_trf",
    placeholders: Collection[str] = PLACEHOLDERS,
) -> list[NounPhrase]:
    """The noun phrases of ``prompt`` (whose words are ``words``) from spaCy (``"spacy"``; ``"auto"`` when it loads)
    or from the rule parser (``"rules"``, and ``"auto"`` without spaCy)."""
    if parser in ("auto", "spacy"):
        nlp = load_spacy(spacy_model)
        if nlp is not None:
            return noun_phrases_from_doc(nlp(prompt), words, placeholders)
        if parser == "spacy":
            raise UserError(
                f"--g_parser spacy: spaCy or its model {spacy_model!r} is not installed (pip install -e '.[spacy]' "
                f"and python -m spacy download {spacy_model}); or use --g_parser rules"
            )
        logger.debug("spaCy model %s not available: the rule parser reads %r", spacy_model, prompt)
    return noun_phrases(words, placeholders)
