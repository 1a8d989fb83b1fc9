#!/usr/bin/env python
"""Measure Attend-and-Excite and textual inversion on a bundled ToyWorld model, with the ToyWorld detector.

    python scripts/evaluate_toyworld.py --toy 1    # the BERT toy (models/toyworld/), its A&E preset at 8x8 and 4x4
    python scripts/evaluate_toyworld.py --toy 2    # the SD-family toy (models/toyworld2/), official A&E at 16x16

Each toy writes its own section of docs/results.md (the other toy's section is kept; scripts/demo.sh reads its
headline rates from there) and a plot (docs/results.png, docs/results_toyworld2.png).
--config/--ckpt/--finetune_config/--ae_config/--attention_res override the toy's defaults.

(o)   single subjects "a photo of a {colour} {shape}" (every colour x shape, 4 seeds each), plain sampling: the share
      drawn as asked (the bar of the toy's shipped-model test is set from it).

(i)   two-subject prompts "a {colour} {shape} and a {colour} {shape}" (distinct shapes and colours), one seed each:
      share of images missing a named subject (the detector does not find every named shape), with fewer objects
      than named subjects (a subject not drawn at all, whatever its shape), showing all subjects (shapes) and all
      with the right colours, plain against A&E, with a paired 95% bootstrap interval of the
      difference; A&E at each cross-attention resolution asked for. If the plain model shows little neglect (all
      subjects in >= 90%), three-subject prompts are measured too (--three_subjects yes: always).
(ii)  inversion: "*" is learned from data/toyworld/heldout with main.py (the toy's finetune config), then the
      share of "a photo of *" samples where the detector finds the held-out star, against "*" = its init word;
      each with and without A&E on "*".
(iii) "a * and a {colour} {shape}": both present, plain against A&E (learned "*").
Seeds are fixed (prompt list, starting noise, inversion), so a rerun reproduces the numbers on the same machine.
Evaluation seeds: prompt seeds 0-2, noise 5000+ (o), 10000+ (i), 20000+ (i'), 30000+ (ii), 40000+ (iii); tuning
used other ones (the first toy's A&E preset: prompt seed 100, noise 50000+; ToyWorld 2's caption-noise sweep,
scripts/toyworld2_neglect.py: prompt seed 200, noise 60000+; the shipped-model tests: noise 1000+).
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


@dataclass(frozen=True)
class Toy:
    """A bundled ToyWorld model and the defaults of its evaluation."""

    title: str
    config: Path  # inference config
    ckpt: Path  # exported weights
    finetune: Path  # inversion config (main.py)
    ae_config: Path  # the A&E setting under test
    attention_res: str  # map sides to compare, main first
    colour_words: bool  # also run A&E exciting the colour words


TOYS = {
    "1": Toy("ToyWorld 1 (BERT tower, clean captions)", INFERENCE_CONFIG, WEIGHTS,
             REPO / "configs" / "toyworld" / "finetune.yaml", AE_CONFIG, "8,4", True),
    "2": Toy("ToyWorld 2 (SD-v1 family: CLIP tower, caption noise)",
             REPO / "configs" / "toyworld2" / "txt2img-inference.yaml",
             REPO / "models" / "toyworld2" / "txt2img.safetensors",
             REPO / "configs" / "toyworld2" / "finetune.yaml", OFFICIAL_AE_CONFIG, "16", False),
}  # fmt: skip

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


def invert(steps: int, logdir: Path, seed: int, ckpt: str, finetune: str | Path) -> Path:
    """Learn "*" with main.py (config ``finetune``) on the held-out images; returns the embeddings file."""
    cmd = [
        sys.executable, "main.py", "-t", "--base", str(finetune), "-n", "eval_star",
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


def draw_plot(rows: list[Row], path: Path, title: str = "ToyWorld") -> None:
    """A horizontal bar chart of the rates with 95% Wilson intervals (PIL only)."""
    from PIL import Image, ImageDraw

    bar_h, gap, left, width = 16, 6, 560, 360
    height = 40 + len(rows) * (bar_h + gap) + 30
    img = Image.new("RGB", (left + width + 60, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"{title}: share of samples (95% Wilson intervals)", fill=(0, 0, 0))
    palette = {"plain": (150, 150, 150), "init word": (150, 150, 150)}  # A&E and the learned word: blue
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
    p.add_argument("--toy", choices=sorted(TOYS), default="1", help="1: the BERT toy, 2: the SD-family toy")
    p.add_argument("--config", type=str, default=None, help="inference config (default: the toy's)")
    p.add_argument("--ckpt", type=str, default=None, help="model weights (default: the toy's)")
    p.add_argument("--finetune_config", type=str, default=None, help="inversion config (default: the toy's)")
    p.add_argument("--n_single", type=int, default=64, help="samples of (o), single subjects")
    p.add_argument("--n_pairs", type=int, default=128, help="prompt-seed pairs of benchmark (i)")
    p.add_argument("--n_three", type=int, default=None, help="prompt-seed pairs of (i') (default: --n_pairs)")
    p.add_argument("--n_inversion", type=int, default=64, help="samples of (ii) and pairs of (iii)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--ae_config", type=str, default=None, help="A&E setting under test (toy 1: the ToyWorld preset, "
                   "toy 2: the official defaults)")  # fmt: skip
    p.add_argument("--official_config", type=str, default=str(OFFICIAL_AE_CONFIG), help="official A&E defaults")
    p.add_argument("--attention_res", type=str, default=None, help="A&E map sides to compare, first = main "
                   "(toy 1: 8,4; toy 2: 16)")  # fmt: skip
    p.add_argument("--no_colour_words", action="store_true", help="skip the run that also excites colour words")
    p.add_argument("--inversion_steps", type=int, default=1000)
    p.add_argument("--embedding_path", type=str, default=None, help="skip the inversion and use this file")
    p.add_argument("--three_subjects", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outdir", type=str, default=None, help="sample grids and the inversion run "
                   "(default outputs/evaluate_toyworld[2])")  # fmt: skip
    p.add_argument("--results", type=str, default="docs/results.md", help="markdown; the toy's section is replaced")
    p.add_argument("--plot", type=str, default=None, help="default docs/results.png (toy 1), "
                   "docs/results_toyworld2.png (toy 2)")  # fmt: skip
    args = p.parse_args(argv)
    toy = TOYS[args.toy]
    args.config = args.config or str(toy.config)
    args.ckpt = args.ckpt or str(toy.ckpt)
    args.finetune_config = args.finetune_config or str(toy.finetune)
    args.ae_config = args.ae_config or str(toy.ae_config)
    args.attention_res = args.attention_res or toy.attention_res
    args.no_colour_words = args.no_colour_words or not toy.colour_words
    suffix = "" if args.toy == "1" else args.toy
    args.outdir = args.outdir or f"outputs/evaluate_toyworld{suffix}"
    args.plot = args.plot or ("docs/results.png" if args.toy == "1" else f"docs/results_toyworld{args.toy}.png")
    n_three = args.n_three or args.n_pairs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    settings = SampleSettings(steps=args.steps, scale=args.scale, batch_size=16)
    resolutions = [int(r) for r in args.attention_res.split(",") if r.strip()]
    geometry = check_sampling(  # the flags against the model, before anything is loaded
        args.config, H=settings.size, W=settings.size, steps=args.steps, steps_flag="--steps", scale=args.scale,
        counts=[("--n_pairs", args.n_pairs), ("--n_inversion", args.n_inversion), ("--n_single", args.n_single),
                ("--n_three", n_three)],
        files=[("--ckpt", args.ckpt, True), ("--embedding_path", args.embedding_path, False),
               ("--finetune_config", args.finetune_config, True)],
    )  # fmt: skip
    for r in resolutions:
        check_attention_res(r, settings.size, settings.size, geometry, flag="--attention_res")
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    # (label, config, which words to excite): the setting under test at each map side, the official defaults at the
    # main side (when the setting under test is not already them), and the setting exciting the colour words too
    official_is_main = Path(args.ae_config).resolve() == Path(args.official_config).resolve()
    name = "A&E official" if official_is_main else "A&E"
    methods: list[tuple[str, AttendExciteConfig, str, str]] = [  # (label, config, words, its file)
        (f"{name} {r}x{r}", load_ae_config(args.ae_config, attention_res=r), "shapes", args.ae_config)
        for r in resolutions
    ]
    main_res = resolutions[0]
    if not official_is_main:
        official = load_ae_config(args.official_config, attention_res=main_res)
        methods.append((f"A&E official {main_res}x{main_res}", official, "shapes", args.official_config))
    if not args.no_colour_words:
        methods.append((f"{name} {main_res}x{main_res}, colour+shape words", methods[0][1], "colours", args.ae_config))
    model = load_toyworld_model(args.config, args.ckpt)
    rows: list[Row] = []
    diffs: list[tuple[str, str, tuple[float, float, float]]] = []
    timings: dict[str, float] = {}

    def metrics(verdicts) -> dict[str, np.ndarray]:
        shapes = np.array([v.shapes_present for v in verdicts])
        few = np.array([len(v.detections) < len(v.wanted) for v in verdicts])  # an object is not drawn at all
        return {"missing a subject": ~shapes, "fewer objects than subjects": few, "all subjects (shapes)": shapes,
                "all subjects, right colours": np.array([v.all_correct for v in verdicts])}  # fmt: skip

    def compare(bench: str, prompts, specs, seeds, tag: str) -> None:
        plain, timings[f"{tag} plain"] = run_pairs(model, prompts, specs, seeds, settings, None, outdir, f"{tag}_plain")
        base = metrics(plain)
        for metric, hits in base.items():
            rows.append(Row(bench, "plain", metric, hits))
        for k, (label, cfg, words, _) in enumerate(methods):
            name = f"{tag}_ae{k}_{cfg.attention_res}"
            method_specs = specs if words == "shapes" else colour_and_shape_specs(prompts)
            verdicts, seconds = run_pairs(model, prompts, method_specs, seeds, settings, cfg, outdir, name)
            timings[f"{tag} {label}"] = seconds
            for metric, hits in metrics(verdicts).items():
                rows.append(Row(bench, label, metric, hits))
                diffs.append((bench, f"{label} - plain, {metric}", bootstrap_diff(base[metric], hits)))

    # (o) single subjects, plain
    single = [f"a photo of a {c} {s}" for c, s in itertools.product(DEFAULT_COLOURS, NAMED_SHAPES)]
    single = (single * (args.n_single // len(single) + 1))[: args.n_single]
    verdicts, timings["single plain"] = run_pairs(model, single, single, [5_000 + i for i in range(len(single))],
                                                  settings, None, outdir, "single_plain")  # fmt: skip
    rows.append(Row("(o) one subject", "plain", "drawn as asked", np.array([v.all_correct for v in verdicts])))

    # (i) two subjects
    prompts, specs = subject_prompts(args.n_pairs, 2, args.seed)
    seeds = [10_000 + i for i in range(len(prompts))]
    compare("(i) two subjects", prompts, specs, seeds, "two_subjects")
    plain_rate = next(r.rate for r in rows if r.benchmark.startswith("(i)") and r.metric == "all subjects (shapes)")
    if args.three_subjects == "yes" or (args.three_subjects == "auto" and plain_rate >= 0.9):
        prompts3, specs3 = subject_prompts(n_three, 3, args.seed + 1)
        compare("(i') three subjects", prompts3, specs3, [20_000 + i for i in range(len(prompts3))], "three_subjects")

    # (ii) inversion
    if args.embedding_path:
        emb = Path(args.embedding_path)
    else:
        emb = invert(args.inversion_steps, outdir / "inversion", args.seed, args.ckpt, args.finetune_config)
    n = args.n_inversion
    photo = ["a photo of *"] * n
    seeds2 = [30_000 + i for i in range(n)]
    model_inv = load_toyworld_model(args.config, args.ckpt, embedding_path=emb)
    preset = methods[0][1]  # the A&E setting under test at the main map side, exciting "*"
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

    section = write_results(args, toy, methods, rows, diffs, timings, emb)
    draw_plot(rows, Path(args.plot), toy.title)
    print(section)
    return 0


def _rel(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def _markers(toy: str) -> tuple[str, str]:
    return f"<!-- toyworld{toy} results: begin -->", f"<!-- toyworld{toy} results: end -->"


def merge_section(text: str, toy: str, section: str) -> str:
    """``text`` (a results file, possibly empty) with toy ``toy``'s section replaced by ``section`` (or appended);
    the other toys' sections and anything outside the markers are kept, and sections stay in toy order."""
    begin, end = _markers(toy)
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        return before + block + rest.split(end, 1)[1]
    if not text.strip():
        return "# ToyWorld results\n\n" + block + "\n"
    later = [t for t in sorted(TOYS) if t > toy and _markers(t)[0] in text]
    if later:  # insert before the first later toy's section
        at = text.index(_markers(later[0])[0])
        return text[:at] + block + "\n\n" + text[at:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_results(args, toy: Toy, methods, rows: list[Row], diffs, timings: dict[str, float], emb: Path) -> str:
    """Replace this toy's section of ``args.results``; returns the section."""
    cmd = "python scripts/evaluate_toyworld.py " + " ".join(sys.argv[1:])
    described = "; ".join(
        f"`{label}`: `{_rel(path)}` at {cfg.attention_res}x{cfg.attention_res} (softmax_scale {cfg.softmax_scale:g},"
        f" step size {cfg.scale_factor:g}, thresholds {dict(cfg.thresholds)} of a {cfg.schedule_steps}-step schedule"
        f" rescaled to {args.steps} steps{', exciting the colour words too' if words == 'colours' else ''})"
        for label, cfg, words, path in methods
    )
    lines = [
        f"## {toy.title}",
        "",
        "Made by",
        "",
        "```",
        cmd.strip(),
        "```",
        "",
        f"Model: `{_rel(args.ckpt)}` with `{_rel(args.config)}`; DDIM {args.steps} steps, eta 0, guidance scale"
        f" {args.scale}; one fixed seed per prompt (the same starting noise with and without A&E). A&E excites the"
        f" shape words (and `*`): {described}. Inversion: `main.py` with `{_rel(args.finetune_config)}`, embeddings"
        f' `{_rel(emb)}`. Verdicts: `ldm/evaluation/toyworld_detect.py` ("*" counts as the held-out star; a'
        " sample misses a subject when some named shape is not found on its own object). Prompts and seeds are fixed"
        " in the script (evaluation seeds, disjoint from every tuning seed).",
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
    lines += ["", f"![results {toy.title}]({Path(args.plot).name})", ""]
    section = "\n".join(lines)
    path = Path(args.results)
    save_text(merge_section(path.read_text() if path.is_file() else "", args.toy, section), path)
    return section


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
