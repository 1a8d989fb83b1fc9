"""Merge several embeddings files into one (textual inversion: several concepts in one prompt).

    python scripts/merge_embeddings.py --manager_ckpts cat/embeddings.pt dog/embeddings.pt \
        --output_path merged.pt -sd --rename '*=@'

Inputs may be in any supported format (TI, A1111, diffusers). A placeholder used by two files is a clash: each
`--rename OLD=NEW` renames the next clashing OLD (in file order) to NEW; a clash without a rename is an error.
Never prompts. `-sd` means the files are for Stable Diffusion v1 (CLIP tokens), `-sd2` for Stable Diffusion 2.x
(1024-wide vectors, OpenCLIP tokens); without either, LDM (BERT tokens). `--config` uses the tokenizer and vector size
of the model a config builds instead (any model, e.g. ToyWorld). `-sdxl` merges SDXL files (clip_l/clip_g, CLIP
tokens) into this project's layout with the tower widths recorded (SDXL tools read one placeholder per file: split a
merged file with scripts/convert_embedding.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from ldm.models.description import describe_config  # noqa: E402
from ldm.modules.embedding_interop import (  # noqa: E402
    EmbeddingFileError,
    Embeddings,
    check_dim,
    check_family,
    read_embeddings,
    single_token_id,
    tokenizer_and_widths,
    tokenizer_for_widths,
    write_embeddings,
)

logger = logging.getLogger(__name__)
SD_DIM, SD2_DIM, LDM_DIM = 768, 1024, 1280
SDXL_WIDTHS = {"clip_l": 768, "clip_g": 1280}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manager_ckpts", nargs="+", required=True, help="embeddings files to merge")
    p.add_argument("--output_path", required=True, help="merged file (.pt, or .safetensors)")
    family = p.add_mutually_exclusive_group()
    family.add_argument("-sd", "--stable_diffusion", action="store_true", help="SD v1 embeddings (else LDM)")
    family.add_argument("-sd2", "--stable_diffusion_2", action="store_true", help="SD 2.x embeddings (1024 wide)")
    family.add_argument("-sdxl", "--sdxl", action="store_true", help="SDXL embeddings (clip_l 768 + clip_g 1280)")
    family.add_argument("--config", default=None, help="model config whose tokenizer and vector size to use")
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="resolve a placeholder clash")
    return p


def parse_renames(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise EmbeddingFileError(f"--rename '{value}' must look like OLD=NEW (e.g. --rename '*=@')")
        pairs.append((old, new))
    return pairs


def merge(
    paths: list[str], renames: list[tuple[str, str]], expected: int | dict[str, int], tokenizer: Any = None,
    family: str | None = None,
) -> Embeddings:  # fmt: skip
    """The files' placeholders in one set (``family``: the model family, recorded; a file of another is refused)."""
    widths = {"": expected} if isinstance(expected, int) else dict(expected)
    tokenizer = tokenizer or tokenizer_for_widths(widths)
    pending = list(renames)
    towers = tuple(widths.items()) if list(widths) != [""] else None
    merged = Embeddings({}, {}, "ti", towers=towers, family=family)
    for path in paths:
        embeddings = read_embeddings(path)
        check_dim(embeddings, widths, path)
        check_family(embeddings, family, path)
        for key, vector in embeddings.vectors.items():
            token = embeddings.tokens.get(key)
            if key in merged.vectors:
                match = next((pair for pair in pending if pair[0] == key), None)
                if match is None:
                    raise EmbeddingFileError(
                        f"Placeholder '{key}' of '{path}' is already used by an earlier file. "
                        f"Rename it with --rename '{key}=<new single-token string>'."
                    )
                pending.remove(match)
                key, token = match[1], None
                if key in merged.vectors:
                    raise EmbeddingFileError(f"--rename target '{key}' is itself already used; choose another string")
            merged.vectors[key] = vector
            merged.tokens[key] = token if token is not None else single_token_id(tokenizer, key)
    if pending:
        logger.warning("Unused --rename values (no clash on them): %s", [f"{o}={n}" for o, n in pending])
    return merged


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    opt = get_parser().parse_args(argv)
    # a bad file or flag is raised for ldm.cli.run_cli to print as one "error: ..." line
    tokenizer, widths = tokenizer_and_widths(opt.config) if opt.config else (None, None)
    family_widths = SDXL_WIDTHS if opt.sdxl else SD2_DIM if opt.stable_diffusion_2 else None
    widths = widths or family_widths or (SD_DIM if opt.stable_diffusion else LDM_DIM)
    flag_family = "sdxl" if opt.sdxl else "sd2" if opt.stable_diffusion_2 else "sd1" if opt.stable_diffusion else "ldm"
    family = describe_config(opt.config).family if opt.config else flag_family
    merged = merge(opt.manager_ckpts, parse_renames(opt.rename), widths, tokenizer, family)
    write_embeddings(merged, opt.output_path, "ti")
    logger.info("Merged %s into %s", sorted(merged.vectors), opt.output_path)
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
