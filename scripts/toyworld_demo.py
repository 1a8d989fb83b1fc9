#!/usr/bin/env python
"""The detector's verdicts on the demo's samples (scripts/demo.sh), printed as a short summary.

    python scripts/toyworld_demo.py outputs/demo [--results docs/results.md --toy 2]

Every folder under the given root that holds a ``settings-NNNN.json`` written by scripts/txt2img.py is one sampling run:
its prompt, whether Attend-and-Excite was on, and ``samples/*.png``. For each run the ToyWorld detector lists what
each image shows and whether every object the prompt names is there (shape and colour; ``*`` counts as the held-out
star, ``@`` as a yellow diamond). The table is also written to ``<root>/summary.txt``. With ``--results``, the
evaluation's headline for the toy (scripts/evaluate_toyworld.py's section of docs/results.md: two-subject prompts,
plain against the main A&E setting, with their intervals) is printed beside the demo's own two-subject counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ldm.outputs import save_text  # noqa: E402
from ldm.toyworld.demo import summarise_run  # noqa: E402
from ldm.toyworld.report import evaluation_headline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="outputs/demo", help="folder of the demo's sampling runs")
    parser.add_argument("--verbose", action="store_true", help="list every image's detections")
    parser.add_argument("--results", default=None, help="print this evaluation's headline too (docs/results.md)")
    parser.add_argument("--toy", default="2", help="which toy's section of --results (1 or 2)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    runs = sorted({p.parent for p in root.rglob("settings-*.json")})
    if not runs:
        print(f"no sampling runs (settings-NNNN.json) under {root}; run scripts/demo.sh first", file=sys.stderr)
        return 1
    out = [
        "Detector verdicts (an image counts when every object the prompt names is there, right colour;"
        " A&E xS RxR: softmax scale S, maps RxR):"
    ]
    two = {"plain": [0, 0]}  # two-subject prompts, per method: [images missing a subject, images]
    for run in runs:
        prompt, mode, ok, n, lines, shapes = summarise_run(run)
        out.append(f"  {ok}/{n}  {prompt!r:44} {mode:36} {run.relative_to(root)}/")
        if args.verbose:
            out.extend(lines)
        if prompt.count(" and ") == 1 and "*" not in prompt and "@" not in prompt:
            counts = two.setdefault(mode.split(" on '")[0], [0, 0])  # "plain" or "A&E x100 16x16"
            counts[0] += n - shapes
            counts[1] += n
    if two["plain"][1]:
        out.append("")
        out.append("This demo, two-subject prompts: missing a subject in " + ", ".join(
            f"{k} {m}/{n} ({m / max(n, 1):.2f})" for k, (m, n) in two.items()) + " images")  # fmt: skip
    if args.results:
        out.extend(evaluation_headline(Path(args.results).read_text(), args.toy))
    text = "\n".join(out)
    print(text)
    save_text(text + "\n", root / "summary.txt")
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
