#!/usr/bin/env python
"""Measure Attend-and-Excite and textual inversion on the bundled ToyWorld model, with the ToyWorld detector.

    python scripts/evaluate_toyworld.py            # writes docs/results.md and docs/results.png

(i)   two-subject prompts "a {colour} {shape} and a {colour} {shape}" (distinct shapes and colours), one seed each:
      share of images showing both subjects (shapes) and both with the right colours, plain against A&E, with a
      paired 95% bootstrap interval of the difference; A&E at each cross-attention resolution of the toy UNet.
      If the plain model shows little neglect (both subjects in >= 90%), three-subject prompts are measured too.
(ii)  inversion: "*" is learned from data/toyworld/heldout with main.py (configs/toyworld/finetune.yaml), then the
      share of "a photo of *" samples where the detector finds the held-out star, against "*" = its init word;
      each with and without A&E on "*".
(iii) "a * and a {colour} {shape}": both present, plain against A&E (learned "*").
Seeds are fixed (prompt list, starting noise, inversion), so a rerun reproduces the numbers on the same machine.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ldm.ae_flags import load_ae_config  # noqa: E402
from ldm.data.toyworld import DEFAULT_COLOURS, NAMED_SHAPES  # noqa: E402
from ldm.evaluation.toyworld_detect import parse_caption  # noqa: E402
from ldm.evaluation.toyworld_sampling import (  # noqa: E402
    AE_CONFIG,
    HELDOUT_DIR,
    INFERENCE_CONFIG,
    WEIGHTS,
    SampleSettings,
    judge,
    load_toyworld_model,
    sample_images,
    save_grid,
)
from ldm.models.diffusion.guidance.attend_and_excite import AttendExciteConfig  # noqa: E402
from ldm.outputs import save_image, save_text  # noqa: E402
from ldm.validation import check_attention_res, check_sampling  # noqa: E402

OFFICIAL_AE_CONFIG = REPO / "configs" / "guidance" / "attend_and_excite.yaml"

logger = logging.getLogger("evaluate_toyworld")


# --- prompts -----------------------------------------------------------------------------------------------------
def subject_prompts(n: int, k: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` prompts naming ``k`` subjects with distinct shapes and colours, and their A&E token specs."""
    rng = np.random.default_rng(seed)
    prompts, specs = [], []
    for _ in range(n):
        shapes = rng.choice(NAMED_SHAPES, size=k, replace=False)
        colours = rng.choice(DEFAULT_COLOURS, size=k, replace=False)
        phrases = [f"a {c} {s}" for c, s in zip(colours, shapes, strict=True)]
        prompts.append(" and ".join(phrases) if k == 2 else ", ".join(phrases[:-1]) + " and " + phrases[-1])
        specs.append(",".join(shapes))
    return prompts, specs


def colour_and_shape_specs(prompts: list[str]) -> list[str]:
    """A&E specs that excite every colour word and every shape word (or "*") a prompt names, in order."""
    return [",".join(w for c, s in parse_caption(p, {"*": "*"}) for w in ((c, s) if c else (s,))) for p in prompts]


def placeholder_prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(DEFAULT_COLOURS, NAMED_SHAPES))
    picks = [combos[int(i)] for i in rng.integers(len(combos), size=n)]
    return [f"a * and a {c} {s}" for c, s in picks], [f"*,{s}" for _, s in picks]


# --- statistics --------------------------------------------------------------------------------------------------
def bootstrap_diff(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired samples and its 95% percentile bootstrap interval (pairs resampled)."""
    d = b.astype(float) - a.astype(float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(len(d), size=(n_boot, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return 0.0, 0.0
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@dataclass
class Row:
    benchmark: str
    method: str
    metric: str
    hits: np.ndarray  # [N] bool

    @property
    def rate(self) -> float:
        return float(self.hits.mean())


# --- runs --------------------------------------------------------------------------------------------------------
def run_pairs(model, prompts, specs, seeds, settings, ae_config, outdir: Path, name: str) -> tuple[list, float]:
    """Sample all prompts (grouped by A&E spec so a batch shares one spec); verdicts in prompt order."""
    t0 = time.time()
    order = sorted(range(len(prompts)), key=lambda i: specs[i] if ae_config is not None else "")
    images = torch.zeros(len(prompts), 3, settings.size, settings.size)
    groups = itertools.groupby(order, key=lambda i: specs[i] if ae_config is not None else "")
    for spec, idx in groups:
        idx = list(idx)
        images[idx] = sample_images(
            model, [prompts[i] for i in idx], [seeds[i] for i in idx], settings,
            ae_tokens=spec or None, ae_config=ae_config,
        )  # fmt: skip
    verdicts = judge(images, prompts)
    save_grid(images[:32], outdir / f"{name}.png", nrow=8)
    elapsed = time.time() - t0
    logger.info("%s: %d samples in %.0f s", name, len(prompts), elapsed)
    return verdicts, elapsed


def invert(steps: int, logdir: Path, seed: int, ckpt: str) -> Path:
    """Learn "*" with main.py on the held-out images; returns the embeddings file."""
    cmd = [
        sys.executable, "main.py", "-t", "--base", "configs/toyworld/finetune.yaml", "-n", "eval_star",
        "--logdir", str(logdir), "--accelerator", "cpu", "--seed", str(seed), "--actual_resume", ckpt,
        "--data_root", str(HELDOUT_DIR), "--init_word", "object", "--max_steps", str(steps),
        "lightning.trainer.enable_progress_bar=false",
    ]  # fmt: skip
    logger.info("Inversion: %s", " ".join(cmd))
    subprocess.run(cmd, cwd=REPO, check=True)
    found = sorted(logdir.glob("*_eval_star/checkpoints/embeddings.pt"))
    if not found:
        raise FileNotFoundError(f"the inversion wrote no embeddings.pt under {logdir}")
    return found[-1]


def draw_plot(rows: list[Row], path: Path) -> None:
    """A horizontal bar chart of the rates with 95% Wilson intervals (PIL only)."""
    from PIL import Image, ImageDraw

    bar_h, gap, left, width = 16, 6, 560, 360
    height = 40 + len(rows) * (bar_h + gap) + 30
    img = Image.new("RGB", (left + width + 60, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((10, 10), "ToyWorld: share of samples the detector accepts (95% Wilson intervals)", fill=(0, 0, 0))
    palette = {"plain": (150, 150, 150), "init word": (150, 150, 150)}
    for k, row in enumerate(rows):
        y = 40 + k * (bar_h + gap)
        d.text((10, y + 2), f"{row.benchmark} | {row.metric} | {row.method}"[:92], fill=(0, 0, 0))
        colour = palette.get(row.method, (60, 110, 200))
        d.rectangle([left, y, left + int(width * row.rate), y + bar_h], fill=colour)
        lo, hi = wilson(int(row.hits.sum()), len(row.hits))
        mid = y + bar_h // 2
        d.line([left + int(width * lo), mid, left + int(width * hi), mid], fill=(0, 0, 0), width=2)
        d.text((left + width + 8, y + 2), f"{row.rate:.2f}", fill=(0, 0, 0))
    y = height - 24
    for frac in (0.0, 0.5, 1.0):
        x = left + int(width * frac)
        d.line([x, 36, x, y], fill=(200, 200, 200))
        d.text((x - 8, y + 4), f"{frac:.1f}", fill=(0, 0, 0))
    save_image(img, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_pairs", type=int, default=128, help="prompt-seed pairs of benchmark (i)")
    p.add_argument("--n_inversion", type=int, default=64, help="samples of (ii) and pairs of (iii)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--ae_config", type=str, default=str(AE_CONFIG), help="A&E preset (the ToyWorld one)")
    p.add_argument("--official_config", type=str, default=str(OFFICIAL_AE_CONFIG), help="official A&E defaults")
    p.add_argument("--attention_res", type=str, default="8,4", help="A&E map sides to compare (first = main)")
    p.add_argument("--no_colour_words", action="store_true", help="skip the run that also excites colour words")
    p.add_argument("--inversion_steps", type=int, default=1000)
    p.add_argument("--embedding_path", type=str, default=None, help="skip the inversion and use this file")
    p.add_argument("--three_subjects", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--ckpt", type=str, default=str(WEIGHTS), help="model weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outdir", type=str, default="outputs/evaluate_toyworld", help="sample grids and the inversion run")
    p.add_argument("--results", type=str, default="docs/results.md")
    p.add_argument("--plot", type=str, default="docs/results.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    settings = SampleSettings(steps=args.steps, scale=args.scale, batch_size=16)
    resolutions = [int(r) for r in args.attention_res.split(",") if r.strip()]
    geometry = check_sampling(  # the flags against the model, before anything is loaded
        INFERENCE_CONFIG, H=settings.size, W=settings.size, steps=args.steps, steps_flag="--steps", scale=args.scale,
        counts=[("--n_pairs", args.n_pairs), ("--n_inversion", args.n_inversion)],
        files=[("--ckpt", args.ckpt, True), ("--embedding_path", args.embedding_path, False)],
    )  # fmt: skip
    for r in resolutions:
        check_attention_res(r, settings.size, settings.size, geometry, flag="--attention_res")
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    # (label, config, which words to excite): the preset at each map side, the official defaults at the main side,
    # and the preset exciting the colour words too
    methods: list[tuple[str, AttendExciteConfig, str]] = [
        (f"A&E {r}x{r}", load_ae_config(args.ae_config, attention_res=r), "shapes") for r in resolutions
    ]
    main_res = resolutions[0]
    official = load_ae_config(args.official_config, attention_res=main_res)
    methods.append((f"A&E official {main_res}x{main_res}", official, "shapes"))
    if not args.no_colour_words:
        methods.append((f"A&E {main_res}x{main_res}, colour+shape words", methods[0][1], "colours"))
    model = load_toyworld_model(INFERENCE_CONFIG, args.ckpt)
    rows: list[Row] = []
    diffs: list[tuple[str, str, tuple[float, float, float]]] = []
    timings: dict[str, float] = {}

    def compare(bench: str, prompts, specs, seeds, tag: str) -> None:
        plain, timings[f"{tag} plain"] = run_pairs(model, prompts, specs, seeds, settings, None, outdir, f"{tag}_plain")
        base = {
            "all subjects (shapes)": np.array([v.shapes_present for v in plain]),
            "all subjects, right colours": np.array([v.all_correct for v in plain]),
        }
        for metric, hits in base.items():
            rows.append(Row(bench, "plain", metric, hits))
        for k, (label, cfg, words) in enumerate(methods):
            name = f"{tag}_ae{k}_{cfg.attention_res}"
            method_specs = specs if words == "shapes" else colour_and_shape_specs(prompts)
            verdicts, seconds = run_pairs(model, prompts, method_specs, seeds, settings, cfg, outdir, name)
            timings[f"{tag} {label}"] = seconds
            for metric, hits in (
                ("all subjects (shapes)", np.array([v.shapes_present for v in verdicts])),
                ("all subjects, right colours", np.array([v.all_correct for v in verdicts])),
            ):
                rows.append(Row(bench, label, metric, hits))
                diffs.append((bench, f"{label} - plain, {metric}", bootstrap_diff(base[metric], hits)))

    # (i) two subjects
    prompts, specs = subject_prompts(args.n_pairs, 2, args.seed)
    seeds = [10_000 + i for i in range(len(prompts))]
    compare("(i) two subjects", prompts, specs, seeds, "two_subjects")
    plain_rate = next(r.rate for r in rows if r.benchmark.startswith("(i)") and r.metric == "all subjects (shapes)")
    if args.three_subjects == "yes" or (args.three_subjects == "auto" and plain_rate >= 0.9):
        prompts3, specs3 = subject_prompts(args.n_pairs, 3, args.seed + 1)
        compare("(i') three subjects", prompts3, specs3, [20_000 + i for i in range(len(prompts3))], "three_subjects")

    # (ii) inversion
    if args.embedding_path:
        emb = Path(args.embedding_path)
    else:
        emb = invert(args.inversion_steps, outdir / "inversion", args.seed, args.ckpt)
    n = args.n_inversion
    photo = ["a photo of *"] * n
    seeds2 = [30_000 + i for i in range(n)]
    model_inv = load_toyworld_model(INFERENCE_CONFIG, args.ckpt, embedding_path=emb)
    preset = methods[0][1]  # the ToyWorld A&E preset at the main map side, exciting "*"
    star: dict[str, np.ndarray] = {}
    for label, m, ae in (
        ("init word", model, None),  # "*" = its init word "object"
        ("init word + A&E", model, preset),
        ("learned *", model_inv, None),
        ("learned * + A&E", model_inv, preset),
    ):
        images = sample_images(m, photo, seeds2, settings, ae_tokens="*" if ae else None, ae_config=ae)
        save_grid(images[:32], outdir / f"photo_of_star_{label.replace(' ', '_').replace('*', 'star')}.png")
        star[label] = np.array([v.all_correct for v in judge(images, photo)])
        rows.append(Row("(ii) a photo of *", label, "star found", star[label]))
    for a, b in (
        ("init word", "learned *"),
        ("init word + A&E", "learned * + A&E"),
        ("learned *", "learned * + A&E"),
    ):
        diffs.append(("(ii) a photo of *", f"{b} - {a}, star found", bootstrap_diff(star[a], star[b])))

    # (iii) the learned word with another subject
    model = model_inv
    prompts3, specs3 = placeholder_prompts(n, args.seed + 2)
    compare("(iii) a * and a {colour} {shape}", prompts3, specs3, [40_000 + i for i in range(n)], "star_and_subject")

    write_results(args, rows, diffs, timings, emb)
    draw_plot(rows, Path(args.plot))
    print(Path(args.results).read_text())
    return 0


def _rel(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def write_results(args, rows: list[Row], diffs, timings: dict[str, float], emb: Path) -> None:
    cmd = "python scripts/evaluate_toyworld.py " + " ".join(sys.argv[1:])
    preset = load_ae_config(args.ae_config)
    lines = [
        "# ToyWorld results",
        "",
        "Made by",
        "",
        "```",
        cmd.strip(),
        "```",
        "",
        f"Model: `{_rel(args.ckpt)}` with `{INFERENCE_CONFIG.relative_to(REPO)}`; DDIM {args.steps} steps,"
        f" eta 0, guidance scale {args.scale}; one fixed seed per prompt (the same starting noise with and without"
        " A&E). A&E: `A&E RxR` is the ToyWorld preset"
        f" `{_rel(args.ae_config)}` (the official defaults with softmax_scale {preset.softmax_scale:g};"
        " thresholds {0: .05, 10: .5, 20: .8} of a 50-step schedule rescaled to"
        f" {args.steps} steps, step size {preset.scale_factor:g}) on the cross-attention maps of side R (8x8: the"
        " ds=2 layers, 4x4: the ds=4 layers and the middle block, of the 16x16 latent), exciting the shape words"
        f" (and `*`); `A&E official` is `{_rel(args.official_config)}` (softmax_scale 100) at the main side;"
        " `colour+shape words` excites the colour words too. The preset was tuned on prompt-seed pairs disjoint from"
        " these (see the preset file). Inversion: `main.py` with `configs/toyworld/finetune.yaml`,"
        f" {args.inversion_steps} steps, embeddings `{_rel(emb)}`. Verdicts: `ldm/evaluation/toyworld_detect.py`"
        ' ("*" counts as the held-out star).',
        "",
        "| benchmark | method | metric | rate | 95% CI (Wilson) | n |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = wilson(int(r.hits.sum()), len(r.hits))
        n = len(r.hits)
        lines.append(f"| {r.benchmark} | {r.method} | {r.metric} | {r.rate:.3f} | [{lo:.3f}, {hi:.3f}] | {n} |")
    lines += ["", "Differences (paired bootstrap over prompt-seed pairs, 10000 resamples):", ""]
    lines += ["| benchmark | difference | mean | 95% CI | excludes 0 |", "|---|---|---|---|---|"]
    for bench, name, (m, lo, hi) in diffs:
        excludes = "yes" if lo > 0 or hi < 0 else "no"
        lines.append(f"| {bench} | {name} | {m:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {excludes} |")
    lines += ["", "Sampling time (seconds, this machine): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    lines += ["", f"![results]({Path(args.plot).name})", ""]
    save_text("\n".join(lines) + "\n", args.results)


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
