"""The two learned words of the ToyWorld two-concept benchmark, and how they are learned and merged into one file.

- ``*``: the held-out star, which no caption names (any colour), learned from the five pictures in
  data/toyworld/heldout starting from "object";
- ``@``: a yellow diamond under a word of its own, learned from the five pictures in data/toyworld/yellow_diamond
  (``scripts/make_toyworld_heldout.py --shape diamond --colour yellow --seed 1``) starting from "diamond".

Why a yellow diamond: the toys draw it from words ("a yellow diamond"), so an embedding that means it exists within
reach of inversion (with 2 vectors, the pair "yellow", "diamond" is one), and it differs from the star in shape, so
the detector tells which of the two words a sample dropped. The other suggestion, the star in one colour, would make
"a * and a @" two stars that only the colour tells apart, and ``*`` itself covers every colour of the star.

Each word is learned with ``main.py`` and the toy's ``finetune.yaml`` (2 vectors, 1000 steps), as the evaluation
learns ``*``; ``scripts/merge_embeddings.py --config <the toy's config>`` writes the file with both
(``scripts/learn_toyworld_words.py`` does all three; the files it made ship as ``WORDS_FILES``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ldm.toyworld.benchmarks import invert
from ldm.toyworld.sampling import HELDOUT_DIR, PLACEHOLDERS, ROOT

logger = logging.getLogger(__name__)

__all__ = ["LearnedWord", "WORDS", "WORDS_FILES", "learn_words", "merge_words"]


@dataclass(frozen=True)
class LearnedWord:
    """A placeholder, what it should draw (the detector's verdict: ``PLACEHOLDERS``) and how it is learned."""

    placeholder: str
    data_root: Path  # the five pictures
    init_word: str  # the word its vectors start from
    run_name: str  # main.py's -n

    @property
    def meaning(self) -> str | tuple[str, str]:
        return PLACEHOLDERS[self.placeholder]


WORDS: dict[str, LearnedWord] = {
    "*": LearnedWord("*", HELDOUT_DIR, "object", "eval_star"),
    "@": LearnedWord("@", ROOT / "data" / "toyworld" / "yellow_diamond", "diamond", "eval_yellow_diamond"),
}

# The shipped files with both words, per toy (made by scripts/learn_toyworld_words.py; models/toyworld/README.md).
WORDS_FILES: dict[str, Path] = {
    "1": ROOT / "models" / "toyworld" / "learned_words.safetensors",
    "2": ROOT / "models" / "toyworld2" / "learned_words.safetensors",
}


def learn_words(
    words: list[str], steps: int, logdir: Path, seed: int, ckpt: str | Path, finetune: str | Path
) -> dict[str, Path]:
    """Learn each placeholder of ``words`` with main.py (config ``finetune``, ``steps`` steps, seed ``seed``); the
    embeddings file of each."""
    files = {}
    for placeholder in words:
        word = WORDS[placeholder]
        files[placeholder] = invert(steps, logdir, seed, str(ckpt), finetune, data_root=word.data_root,
                                    init_word=word.init_word, placeholder=placeholder, name=word.run_name)  # fmt: skip
    return files


def merge_words(files: list[Path], output: Path, config: str | Path) -> Path:
    """One embeddings file with the placeholders of ``files`` (scripts/merge_embeddings.py, the tokenizer of the
    model ``config`` builds); returns ``output``."""
    cmd = [sys.executable, "scripts/merge_embeddings.py", "--manager_ckpts", *map(str, files),
           "--output_path", str(output), "--config", str(config)]  # fmt: skip
    logger.info("Merging: %s", " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)
    return output
