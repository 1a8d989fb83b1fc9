#!/usr/bin/env python
"""Speed-up of N sampling processes over 1 (the engine, Lightning Fabric, gloo on the CPU; printed, never asserted).

Runs ``scripts/stable_txt2img.py --from-file`` on the goldens' tiny SD model with 1 process and with N, each from
the command line as a user would, and again on the finished folder (every image exists, so that run is the fixed
cost: start-up, model loading, process group). Prints the wall times and the speed-up with and without that cost.

    python benchmarks/bench_scale.py [--processes 2] [--prompts 8] [--images 2] [--steps 10] [--size 64]
    python benchmarks/bench_scale.py --accelerator gpu --processes 4 --size 512 --config ... --ckpt ...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, out: Path, prompts: Path, processes: int) -> float:
    """Seconds of one run of the script with ``processes`` processes."""
    cmd = [
        sys.executable, str(REPO / "scripts" / "stable_txt2img.py"), "--config", args.config, "--ckpt", args.ckpt,
        "--from-file", str(prompts), "--outdir", str(out), "--n_iter", str(args.images), "--n_samples",
        str(args.batch_size), "--ddim_steps", str(args.steps), "--H", str(args.size), "--W", str(args.size),
        "--f", str(args.f), "--precision", "full", "--skip_grid", "--accelerator", args.accelerator,
        "--devices", str(processes), "--strategy", "ddp" if processes > 1 else "auto",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the run with {processes} processes failed:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2, help="N (default 2)")
    p.add_argument("--accelerator", default="cpu", help="cpu (default) or gpu")
    p.add_argument("--prompts", type=int, default=8, help="prompts in the list (default 8)")
    p.add_argument("--images", type=int, default=2, help="images per prompt (default 2)")
    p.add_argument("--batch_size", type=int, default=2, help="images per batch (default 2)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (default 10)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--f", type=int, default=2, help="the autoencoder's factor (tiny model: 2)")
    p.add_argument("--config", default=str(REPO / "configs/tests/golden_tiny_sd.yaml"))
    p.add_argument("--ckpt", default=str(REPO / "tests/fixtures/golden/weights/tiny_sd.ckpt"))
    args = p.parse_args()
    words = ["cat", "dog", "frog", "bird", "horse", "bear", "crown", "bench", "apple", "car"]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        lines = [f"a {words[i % len(words)]} and a {words[(3 * i + 1) % len(words)]}" for i in range(args.prompts)]
        prompts.write_text("\n".join(lines) + "\n")
        results = {}
        for n in (1, args.processes):
            out = Path(tmp) / f"out{n}"
            total = run(args, out, prompts, n)
            fixed = run(args, out, prompts, n)  # everything exists: start-up and loading only
            results[n] = (total, fixed)
    images = args.prompts * args.images
    print(f"{images} images ({args.prompts} prompts x {args.images}), {args.steps} DDIM steps, {args.size}px, "
          f"batch {args.batch_size}, accelerator {args.accelerator}, {os.cpu_count()} CPU cores")  # fmt: skip
    for n, (total, fixed) in results.items():
        print(f"  {n} process(es): {total:6.1f} s in all, {fixed:5.1f} s fixed cost, "
              f"{images / max(total - fixed, 1e-9):6.2f} images/s sampling")  # fmt: skip
    (t1, f1), (tn, fn) = results[1], results[args.processes]
    print(f"speed-up of {args.processes} processes over 1: {t1 / tn:.2f}x in all, "
          f"{(t1 - f1) / max(tn - fn, 1e-9):.2f}x on the sampling alone")  # fmt: skip


if __name__ == "__main__":
    main()
