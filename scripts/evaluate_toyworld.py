#!/usr/bin/env python
"""Measure Attend-and-Excite and textual inversion on a bundled ToyWorld model, with the ToyWorld detector.

    python scripts/evaluate_toyworld.py --toy 1    # the BERT toy (models/toyworld/), its A&E preset at 8x8 and 4x4
    python scripts/evaluate_toyworld.py --toy 2    # the SD-family toy (models/toyworld2/), official A&E at 16x16,
                                                   # and the first toy's preset (--second_ae_config) at 8x8

Each toy writes its own section of docs/results.md (the other toy's section is kept; scripts/demo.sh reads its
headline rates from there) and a plot (docs/results.png, docs/results_toyworld2.png).
--config/--ckpt/--finetune_config/--ae_config/--attention_res/--second_ae_config override the toy's defaults.

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
--methods plain,ae,syngen,...: instead, every registered guidance method against plain in one table with paired
      95% intervals, time per image and UNet evaluations per image: GenEval's tasks judged by GenEval's rules
      (--n_geneval images each; counting and position are marked as not asked: the toys' captions lack their words)
      and their mean, (i), (i'), and with the learned words "*" (star) and "@" (yellow diamond) (iii), (iv) "a * and
      a @", (v) "a @ and a {colour} {shape}" (--n_inversion pairs each). The learned words come from --embedding_path,
      else the toy's shipped models/toyworld[2]/learned_words.safetensors (scripts/learn_toyworld_words.py), else
      (another --ckpt) they are learned first. Each method runs with its ToyWorld settings (ldm/toyworld/methods.py
      says where they come from). It writes its own section of the results file ("Guidance methods on <toy>").
Seeds are fixed (prompt list, starting noise, inversion), so a rerun reproduces the numbers on the same machine.
Evaluation seeds: prompt seeds 0-2, noise 5000+ (o), 10000+ (i), 20000+ (i'), 30000+ (ii), 40000+ (iii); tuning
used other ones (the first toy's A&E preset: prompt seed 100, noise 50000+; ToyWorld 2's caption-noise sweep,
scripts/toyworld2_neglect.py: prompt seed 200, noise 60000+; the shipped-model tests: noise 1000+).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ldm.ae_flags import load_ae_config  # noqa: E402
from ldm.errors import UserError  # noqa: E402
from ldm.models.diffusion.samplers import SAMPLER_NAMES, SAMPLERS  # noqa: E402
from ldm.toyworld import sampler_bench  # noqa: E402
from ldm.toyworld.benchmarks import OFFICIAL_AE_CONFIG, TOYS, Benchmarks, ae_methods, invert  # noqa: E402
from ldm.toyworld.concepts import WORDS, WORDS_FILES, learn_words, merge_words  # noqa: E402
from ldm.toyworld.methods import MethodsPlan, compare_methods, toy_methods  # noqa: E402
from ldm.toyworld.methods_table import cost_table, methods_table, verdict_lines  # noqa: E402
from ldm.toyworld.report import RunDescription, draw_plot, rel_path, results_section, write_results  # noqa: E402
from ldm.toyworld.sampling import AE_CONFIG, SampleSettings, load_toyworld_model  # noqa: E402
from ldm.validation import check_attention_res, check_sampling  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy", choices=sorted(TOYS), default="1", help="1: the BERT toy, 2: the SD-family toy")
    p.add_argument("--config", type=str, default=None, help="inference config (default: the toy's)")
    p.add_argument("--ckpt", type=str, default=None, help="model weights (default: the toy's)")
    p.add_argument("--finetune_config", type=str, default=None, help="inversion config (default: the toy's)")
    p.add_argument("--n_single", type=int, default=64, help="samples of (o), single subjects")
    p.add_argument("--n_pairs", type=int, default=128, help="prompt-seed pairs of benchmark (i)")
    p.add_argument("--n_three", type=int, default=None, help="prompt-seed pairs of (i') (default: --n_pairs)")
    p.add_argument("--n_inversion", type=int, default=64, help="samples of (ii) and pairs of (iii); with --methods "
                   "also of (iv) and (v)")  # fmt: skip
    p.add_argument("--n_geneval", type=int, default=64, help="--methods: images per GenEval task (0: none)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim", help="sampler (docs/samplers.md)")
    p.add_argument("--sampler_rows", action="store_true", help="measure only benchmark (i), plain and with "
                   "--sampler_ae_config, for --sampler/--steps: its rows of --rows_file, the 'Samplers' section "
                   "of --results and --samplers_plot")  # fmt: skip
    p.add_argument("--sampler_ae_config", type=str, default=str(AE_CONFIG), help="the A&E setting of --sampler_rows "
                   "(default: the ToyWorld preset, which helps on both toys)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; --sampler_rows: 1)")
    p.add_argument("--rows_file", type=str, default="docs/results_samplers.json", help="--sampler_rows' rows")
    p.add_argument("--samplers_plot", type=str, default="docs/results_samplers.png", help="--sampler_rows' plot")
    p.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--ae_config", type=str, default=None, help="A&E setting under test (toy 1: the ToyWorld preset, "
                   "toy 2: the official defaults)")  # fmt: skip
    p.add_argument("--official_config", type=str, default=str(OFFICIAL_AE_CONFIG), help="official A&E defaults")
    p.add_argument("--attention_res", type=str, default=None, help="A&E map sides to compare, first = main "
                   "(toy 1: 8,4; toy 2: 16)")  # fmt: skip
    p.add_argument("--second_ae_config", type=str, default=None, help="another A&E setting compared with plain, at "
                   "the map side its file sets (toy 2: the first toy's preset configs/toyworld/attend_and_excite.yaml; "
                   "'none': skip)")  # fmt: skip
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
    methods_help = "compare these registered guidance methods with plain sampling in one table (e.g. plain,ae,syngen)"
    p.add_argument("--methods", type=str, default=None, help=methods_help + " instead of the A&E evaluation")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    toy = TOYS[args.toy]
    args.config = args.config or str(toy.config)
    args.ckpt = args.ckpt or str(toy.ckpt)
    args.finetune_config = args.finetune_config or str(toy.finetune)
    args.ae_config = args.ae_config or str(toy.ae_config)
    args.attention_res = args.attention_res or toy.attention_res
    args.no_colour_words = args.no_colour_words or not toy.colour_words
    if args.second_ae_config is None:
        args.second_ae_config = str(toy.second_ae_config) if toy.second_ae_config else None
    elif args.second_ae_config.lower() in ("", "none"):
        args.second_ae_config = None
    suffix = "" if args.toy == "1" else args.toy
    args.outdir = args.outdir or f"outputs/evaluate_toyworld{suffix}"
    args.plot = args.plot or ("docs/results.png" if args.toy == "1" else f"docs/results_toyworld{args.toy}.png")
    n_three = args.n_three or args.n_pairs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads or args.sampler_rows:
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    settings = SampleSettings(sampler=args.sampler, steps=args.steps, scale=args.scale, batch_size=16)
    resolutions = [int(r) for r in args.attention_res.split(",") if r.strip()]
    geometry = check_sampling(  # the flags against the model, before anything is loaded
        args.config, H=settings.size, W=settings.size, steps=args.steps, steps_flag="--steps", scale=args.scale,
        counts=[("--n_pairs", args.n_pairs), ("--n_inversion", args.n_inversion), ("--n_single", args.n_single),
                ("--n_three", n_three)],
        files=[("--ckpt", args.ckpt, True), ("--embedding_path", args.embedding_path, False),
               ("--finetune_config", args.finetune_config, True), ("--second_ae_config", args.second_ae_config, False)],
    )  # fmt: skip
    for r in resolutions:
        check_attention_res(r, settings.size, settings.size, geometry, flag="--attention_res")
    if args.second_ae_config:
        second = load_ae_config(args.second_ae_config)  # names the file when it is missing or has unknown fields
        check_attention_res(second.attention_res, settings.size, settings.size, geometry, flag="--second_ae_config")
    if args.n_geneval < 0:
        raise UserError(f"--n_geneval {args.n_geneval}: give 0 (no GenEval tasks) or more images per task")
    if args.methods:  # unknown names are an error before anything is written or loaded
        args.method_list = toy_methods(args.toy, [n.strip() for n in args.methods.split(",") if n.strip()])
    if args.sampler_rows:
        return sampler_rows(args, settings, geometry)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if args.methods:
        return compare(args, settings, n_three, outdir)
    methods = ae_methods(args.ae_config, args.official_config, resolutions, colour_words=not args.no_colour_words,
                         second_ae_config=args.second_ae_config)  # fmt: skip
    bench = Benchmarks(settings, methods, outdir)
    model = load_toyworld_model(args.config, args.ckpt)
    bench.single_subjects(model, args.n_single)  # (o)
    bench.subjects(model, args.n_pairs, n_three, args.seed, args.three_subjects)  # (i), (i')
    if args.embedding_path:
        emb = Path(args.embedding_path)
    else:
        emb = invert(args.inversion_steps, outdir / "inversion", args.seed, args.ckpt, args.finetune_config)
    model_inv = load_toyworld_model(args.config, args.ckpt, embedding_path=emb)
    bench.photo_of_star(model, model_inv, args.n_inversion)  # (ii)
    bench.star_and_subject(model_inv, args.n_inversion, args.seed)  # (iii)

    run = RunDescription(
        title=toy.title, command="python scripts/evaluate_toyworld.py " + " ".join(sys.argv[1:]), ckpt=args.ckpt,
        config=args.config, steps=args.steps, scale=args.scale, finetune_config=args.finetune_config, embedding=emb,
        plot=args.plot, sampler=args.sampler,
    )  # fmt: skip
    section = results_section(run, methods, bench.rows, bench.diffs, bench.timings)
    write_results(args.results, args.toy, section)
    draw_plot(bench.rows, Path(args.plot), toy.title)
    print(section)
    return 0


def compare(args: argparse.Namespace, settings: SampleSettings, n_three: int, outdir: Path) -> int:
    """--methods: every method against plain in one table (ldm/toyworld/methods.py, methods_table.py)."""
    methods = args.method_list
    model = load_toyworld_model(args.config, args.ckpt)
    emb = Path(args.embedding_path) if args.embedding_path else None
    shipped = WORDS_FILES[args.toy]
    if emb is None and args.n_inversion:  # the shipped "*" and "@" fit the toy's own weights only
        same_model = Path(args.ckpt).resolve() == TOYS[args.toy].ckpt.resolve()
        if same_model and shipped.is_file():
            emb = shipped
        else:
            files = learn_words(list(WORDS), args.inversion_steps, outdir / "inversion", args.seed, args.ckpt,
                                args.finetune_config)  # fmt: skip
            emb = merge_words([files[w] for w in WORDS], outdir / "learned_words.safetensors", args.config)
    model_words = load_toyworld_model(args.config, args.ckpt, embedding_path=emb) if emb else None
    n_three = n_three if args.three_subjects != "no" else 0
    plan = MethodsPlan(args.n_pairs, n_three, args.n_inversion, args.n_geneval, args.n_inversion, args.seed)
    result = compare_methods(model, model_words, methods, settings, plan, outdir)
    toy = TOYS[args.toy]
    command = "python scripts/evaluate_toyworld.py " + shlex.join(args.argv)
    words = f'`{rel_path(emb)}` ("*" the held-out star, "@" a yellow diamond)' if emb else "none"
    lines = [f"## Guidance methods on {toy.title}", "", "Made by", "", "```", command, "```", "",
             f"{SAMPLERS[args.sampler].title} {args.steps} steps, eta 0, guidance scale {args.scale}; the "
             "evaluation's prompts and seeds (plain is the same as in the toy's main section) and new ones for the "
             "GenEval tasks and the learned-word rows (noise 100000+, disjoint from every tuning seed). Learned "
             "words: " + words + ". Settings: "
             + "; ".join(f"{m.label} `{m.source}`" for m in methods) + ". Cells: rate (difference to plain [95% "
             "paired bootstrap interval]), bold where the interval excludes 0. GenEval rows: GenEval's rules on the "
             "ToyWorld detector (ldm/toyworld/geneval.py); its overall score is the mean over the tasks asked, its "
             "interval resampled within each task. UNet evaluations per image count every sample through the UNet "
             "(a CFG step 2, a truncated guidance pass 1).", "", *methods_table(result, methods), "",
             *verdict_lines(result, methods), "", "Cost per benchmark (seconds on this machine, 2 shared cores: "
             "noisy):", "", *cost_table(result, methods), ""]  # fmt: skip
    section = "\n".join(lines)
    write_results(args.results, args.toy, section, kind="methods")
    print(section)
    return 0


def sampler_rows(args: argparse.Namespace, settings: SampleSettings, geometry) -> int:
    """``--sampler_rows``: benchmark (i) plain and with A&E for one sampler and step count (``ldm.toyworld
    .sampler_bench``)."""
    ae_config = load_ae_config(args.sampler_ae_config)
    check_attention_res(ae_config.attention_res, settings.size, settings.size, geometry, flag="--sampler_ae_config")
    model = load_toyworld_model(args.config, args.ckpt)
    label = f"{Path(args.sampler_ae_config).parent.name}/{Path(args.sampler_ae_config).stem}"
    command = "python scripts/evaluate_toyworld.py " + " ".join(sys.argv[1:])
    rows = sampler_bench.measure_setting(model, args.toy, settings, ae_config, label, args.n_pairs, args.seed, command)
    every = sampler_bench.merge_rows(Path(args.rows_file), rows)
    plot = Path(args.samplers_plot)
    sampler_bench.write_section(Path(args.results), sampler_bench.section(every, plot.name))
    sampler_bench.draw_plot(every, plot)
    for r in rows:
        lo, hi = r.interval
        print(f"{r.sampler} {r.steps} {r.method}: all present {r.rate:.3f} [{lo:.3f}, {hi:.3f}], "
              f"{r.denoise_rows:.0f} + {r.guidance_rows:.1f} UNet rows/image, {r.seconds:.3f} s/image")  # fmt: skip
    return 0


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
