#!/usr/bin/env python
"""The detector's verdicts on the demo's samples (scripts/demo.sh), printed as a short summary.

    python scripts/toyworld_demo.py outputs/demo [--results docs/results.md --toy 2]

Every folder under the given root that holds a ``settings-NNNN.json`` written by scripts/txt2img.py is one sampling run:
its prompt, whether Attend-and-Excite was on, and ``samples/*.png``. For each run the ToyWorld detector lists what
each image shows and whether every object the prompt names is there (shape and colour; ``*`` counts as the held-out
star). The table is also written to ``<root>/summary.txt``. With ``--results``, the evaluation's headline for the toy
(scripts/evaluate_toyworld.py's section of docs/results.md: two-subject prompts, plain against the main A&E setting,
with their intervals) is printed beside the demo's own two-subject counts.
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


def summarise_run(run: Path) -> tuple[str, str, int, int, list[str], int]:
    """(prompt, mode, images showing everything asked, images, per-image lines, images showing every named shape)
    of one txt2img output folder."""
    settings = json.loads(max(run.glob("settings-*.json")).read_text())  # the run's latest record
    extra = settings.get("extra", {})
    prompt = extra.get("prompt") or next(iter(settings.get("prompts", {})), "?")
    ae_tokens = settings.get("options", {}).get("ae_tokens", "")
    mode = f"A&E on '{ae_tokens}'" if ae_tokens else "plain"
    if extra.get("embedding_path"):
        mode += " + learned *"
    images = load_images(run / "samples")
    if len(images) == 0:
        return prompt, mode, 0, 0, [], 0
    verdicts = judge(images, [prompt] * len(images))
    lines = [f"    {k}: {v.describe()}" for k, v in enumerate(verdicts)]
    shapes = sum(v.shapes_present for v in verdicts)
    return prompt, mode, sum(v.all_correct for v in verdicts), len(verdicts), lines, shapes


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _interval(text: str) -> tuple[float, float]:
    lo, hi = text.strip("[]").split(",")
    return float(lo), float(hi)


def evaluation_headline(results: str, toy: str) -> list[str]:
    """The two-subject headline of toy ``toy``'s section of a results file (scripts/evaluate_toyworld.py):
    all-subjects-present and missing-subject rates, plain and the main A&E setting (Wilson intervals), and the
    paired-bootstrap gain. The missing-subject rate is 1 - the all-subjects (shapes) rate where it has no row."""
    begin, end = f"<!-- toyworld{toy} results: begin -->", f"<!-- toyworld{toy} results: end -->"
    if begin not in results:
        return [f"(no ToyWorld {toy} section in the results file: run scripts/evaluate_toyworld.py --toy {toy})"]
    section = results.split(begin, 1)[1].split(end, 1)[0]
    bench = "(i) two subjects"
    rates, diffs = {}, {}
    for line in section.splitlines():
        cells = _cells(line) if line.startswith("| ") else []
        if len(cells) == 6 and cells[0] == bench:
            rates[(cells[1], cells[2])] = (float(cells[3]), *_interval(cells[4]), int(cells[5]))
        elif len(cells) == 5 and cells[0] == bench:
            diffs[cells[1]] = (float(cells[2]), *_interval(cells[3]))
    key = next((d for d in diffs if d.endswith(" - plain, all subjects (shapes)")), None)
    if key is None:
        return [f"(the ToyWorld {toy} section has no two-subject A&E row)"]
    method = key.split(" - plain,")[0]
    out = [f"Evaluation (docs/results.md, {rates[('plain', 'all subjects (shapes)')][3]} prompt-seed pairs, two"
           f" subjects, plain vs {method}; 95% intervals):"]  # fmt: skip
    for metric in ("all subjects (shapes)", "missing a subject"):
        parts = []
        for m in ("plain", method):
            if (m, metric) in rates:
                r, lo, hi, _ = rates[(m, metric)]
            else:  # derived from the all-subjects row
                r, lo, hi, _ = rates[(m, "all subjects (shapes)")]
                r, lo, hi = 1 - r, 1 - hi, 1 - lo
            parts.append(f"{m} {r:.2f} [{lo:.2f}, {hi:.2f}]")
        d = diffs.get(f"{method} - plain, {metric}")
        if d is None and metric == "missing a subject":  # the all-subjects difference, negated
            mean, lo, hi = diffs[key]
            d = (-mean, -hi, -lo)
        change = f"; change {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]" if d else ""
        out.append(f"  {metric + ':':24} " + ", ".join(parts) + change)
    return out


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
    out = ["Detector verdicts (an image counts when every object the prompt names is there, right colour):"]
    two = {"plain": [0, 0], "A&E": [0, 0]}  # two-subject prompts: [images missing a subject, images]
    for run in runs:
        prompt, mode, ok, n, lines, shapes = summarise_run(run)
        out.append(f"  {ok}/{n}  {prompt!r:44} {mode:28} {run.relative_to(root)}/")
        if args.verbose:
            out.extend(lines)
        if prompt.count(" and ") == 1 and "*" not in prompt:
            counts = two["A&E" if mode.startswith("A&E") else "plain"]
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
