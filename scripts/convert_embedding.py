"""Convert a textual-inversion embedding between formats: this project / original TI, A1111, diffusers.

    python scripts/convert_embedding.py --input embeddings.pt --output learned_embeds.safetensors --to diffusers
    python scripts/convert_embedding.py --input my-style.safetensors --output embeddings.pt --to ti --placeholder '*'

The input format is detected from the file. `--placeholder` renames a single embedding (A1111 and diffusers files
name the concept by a word that is often not a single token); TI output looks up token ids with the tokenizer of the
model `--config` builds (and checks the vector size against it), else with the tokenizer of the family the vector
size belongs to (768 SD v1, 1024 SD v2, 1280 LDM). `--expect_dim` checks the size. The output folder must exist.

SDXL files (`clip_l` + `clip_g`, as AUTOMATIC1111, ComfyUI and diffusers write them) convert to `--to ti` (this
project's layout, several placeholders, tower widths recorded) and back to `--to a1111` / `--to diffusers` (both are
the clip_l/clip_g file for SDXL); an SD 1/SD 2 file does not become an SDXL one, and the reverse (an error says so).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from ldm.models.description import describe_config  # noqa: E402
from ldm.modules.embedding_interop import (  # noqa: E402
    FORMATS,
    EmbeddingFileError,
    check_dim,
    check_family,
    read_embeddings,
    renamed,
    tokenizer_and_widths,
    with_token_ids,
    write_embeddings,
)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="embeddings file (.pt/.bin/.safetensors, any supported format)")
    p.add_argument("--output", required=True, help="output file; .safetensors or .pt/.bin picks the container")
    p.add_argument("--to", choices=FORMATS, default="ti", help="output format (default: ti)")
    p.add_argument("--placeholder", default=None, help="rename the (single) embedding to this string")
    p.add_argument("--name", default=None, help="A1111 trigger name (default: the output file stem)")
    p.add_argument("--expect_dim", type=int, default=None, help="refuse vectors of another size (768/1024/1280)")
    p.add_argument(
        "--config", default=None, help="model config whose tokenizer looks up token ids (any size; else 768/1024/1280)"
    )
    return p


def convert(argv: list[str] | None = None) -> Path:
    opt = get_parser().parse_args(argv)
    embeddings = read_embeddings(opt.input)
    tokenizer = None
    if opt.config is not None:
        tokenizer, widths = tokenizer_and_widths(opt.config)
        check_dim(embeddings, widths, opt.input)
        check_family(embeddings, describe_config(opt.config).family, opt.input)
    if opt.expect_dim is not None:
        check_dim(embeddings, opt.expect_dim, opt.input)
    if opt.placeholder is not None:
        if len(embeddings.vectors) != 1:
            raise EmbeddingFileError(
                f"--placeholder renames one embedding; '{opt.input}' has {sorted(embeddings.vectors)}"
            )
        embeddings = renamed(embeddings, {next(iter(embeddings.vectors)): opt.placeholder})
    if opt.name is not None:
        embeddings.name = opt.name
    if opt.to == "ti":
        embeddings = with_token_ids(embeddings, tokenizer)
    out = write_embeddings(embeddings, opt.output, opt.to)
    logging.getLogger(__name__).info(
        "%s (%s) -> %s (%s): %s", opt.input, embeddings.source_format, out, opt.to, sorted(embeddings.vectors)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Convert; a bad file or flag is raised for :func:`ldm.cli.run_cli` to print as one ``error: ...`` line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    convert(argv)
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
