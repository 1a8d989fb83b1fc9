#!/usr/bin/env python
"""Which part of Attend-and-Excite helps or hurts on a ToyWorld model (kept under its old name):
``scripts/toyworld_tuning.py --method ae`` with the same flags (--toy, --n, --prompt_seed, --noise_seed, --variants,
--outdir). `--prompt_seed 0 --noise_seed 10000 --n 128` reruns evaluate_toyworld.py's benchmark (i) pairs.

    python scripts/toyworld_ae_ablation.py --n 64            # ToyWorld 2
    python scripts/toyworld_ae_ablation.py --toy 1 --n 64    # the BERT toy, maps at 8x8
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("toyworld_tuning", Path(__file__).with_name("toyworld_tuning.py"))
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)
    return tuning.main(["--method", "ae", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
