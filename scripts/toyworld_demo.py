#!/usr/bin/env python
"""The detector's verdicts on the demo's samples (scripts/demo.sh), printed as a short summary.

    python scripts/toyworld_demo.py outputs/demo

Every folder under the given root that holds a ``settings-NNNN.json`` written by scripts/txt2img.py is one sampling run:
its prompt, whether Attend-and-Excite was on, and ``samples/*.png``. For each run the ToyWorld detector lists what
each image shows and whether every object the prompt names is there (shape and colour; ``*`` counts as the held-out
star). The table is also written to ``<root>/summary.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ldm.evaluation.toyworld_sampling import judge  # noqa: E402
from ldm.outputs import save_text  # noqa: E402


def load_images(folder: Path) -> torch.Tensor:
    """``folder/*.png`` (sorted) as ``[N, 3, H, W]`` in [0, 1]."""
    paths = sorted(folder.glob("*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) if arrays else torch.zeros(0, 3, 64, 64)


def summarise_run(run: Path) -> tuple[str, str, int, int, list[str]]:
    """(prompt, mode, images showing everything asked, images, per-image lines) of one txt2img output folder."""
    settings = json.loads(max(run.glob("settings-*.json")).read_text())  # the run's latest record
    extra = settings.get("extra", {})
    prompt = extra.get("prompt") or next(iter(settings.get("prompts", {})), "?")
    ae_tokens = settings.get("options", {}).get("ae_tokens", "")
    mode = f"A&E on '{ae_tokens}'" if ae_tokens else "plain"
    if extra.get("embedding_path"):
        mode += " + learned *"
    images = load_images(run / "samples")
    if len(images) == 0:
        return prompt, mode, 0, 0, []
    verdicts = judge(images, [prompt] * len(images))
    lines = [f"    {k}: {v.describe()}" for k, v in enumerate(verdicts)]
    return prompt, mode, sum(v.all_correct for v in verdicts), len(verdicts), lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="outputs/demo", help="folder of the demo's sampling runs")
    parser.add_argument("--verbose", action="store_true", help="list every image's detections")
    args = parser.parse_args(argv)
    root = Path(args.root)
    runs = sorted({p.parent for p in root.rglob("settings-*.json")})
    if not runs:
        print(f"no sampling runs (settings-NNNN.json) under {root}; run scripts/demo.sh first", file=sys.stderr)
        return 1
    out = ["Detector verdicts (an image counts when every object the prompt names is there, right colour):"]
    for run in runs:
        prompt, mode, ok, n, lines = summarise_run(run)
        out.append(f"  {ok}/{n}  {prompt!r:44} {mode:28} {run.relative_to(root)}/")
        if args.verbose:
            out.extend(lines)
    text = "\n".join(out)
    print(text)
    save_text(text + "\n", root / "summary.txt")
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
