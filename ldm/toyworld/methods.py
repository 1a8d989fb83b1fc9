"""The registered guidance methods compared on a ToyWorld model: one table, every method against plain sampling on
the same prompt-seed pairs (scripts/evaluate_toyworld.py --methods plain,ae,syngen,...; the table's markdown is
:mod:`ldm.toyworld.methods_table`).

Benchmarks (the evaluation's prompts and seeds where they exist, so plain's rates are those of the toy's main section):
- GenEval's tasks with GenEval's rules on the detector's output (:mod:`ldm.toyworld.geneval`): single object, two
  objects, colours, colour attribution, and their mean; counting and position are not asked of the shipped toys,
  whose captions have no number or position words (the rows say which words are missing);
- (i) two subjects "a {colour} {shape} and a {colour} {shape}": all subjects present, all with the right colours;
- (i') three subjects: the same metrics;
- with the learned words (``*`` the held-out star, ``@`` a yellow diamond; :mod:`ldm.toyworld.concepts`):
  (iii) "a * and a {colour} {shape}", (iv) "a * and a @", (v) "a @ and a {colour} {shape}": the same metrics
  ("@" is present when a diamond is found, right-coloured when it is yellow).
Each method runs with its ToyWorld settings, chosen on tuning seeds (``configs/toyworld2/<file>.yaml`` for the second
toy, else ``configs/toyworld/<file>.yaml``; ``<file>`` is the registry name, ``attend_and_excite`` for A&E), or its
official defaults when it has none. Every method excites the prompt's shape words (and the learned words); a method
that reads the prompt itself (SynGen's modifier-noun pairs) parses it from there. Differences are paired over
prompt-seed pairs with 95% bootstrap intervals; cost is the time per image relative to plain and the UNet evaluations
per image.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.guidance import get_method
from ldm.guidance.flags import load_guidance_yaml
from ldm.models.description import toy_method_settings
from ldm.toyworld.benchmarks import NOISE_SEEDS, run_pairs
from ldm.toyworld.geneval import TASK_TITLES, TASKS, evaluate_detections, task_prompts, unaskable_words
from ldm.toyworld.prompts import placeholder_prompts, subject_prompts
from ldm.toyworld.sampling import PLACEHOLDERS, ROOT, SampleSettings, Verdict

logger = logging.getLogger(__name__)

__all__ = ["ToyMethod", "toy_methods", "MethodsResult", "MethodsPlan", "compare_methods", "count_unet_evaluations",
           "NOISE_SEEDS_METHODS"]  # fmt: skip


@dataclass(frozen=True)
class ToyMethod:
    """A guidance method with the settings it runs with on a toy."""

    name: str  # registry name
    label: str  # the table's column
    config: Any
    source: str  # where the settings came from


def settings_file(toy: str, name: str) -> Path | None:
    """The toy's settings file of a method (the second toy's own, else the first toy's), or None
    (:func:`ldm.models.description.toy_method_settings`)."""
    return toy_method_settings(f"toyworld{toy}", name)


def toy_methods(toy: str, names: Sequence[str]) -> list[ToyMethod]:
    """The methods ``names`` (registry names; "plain" is the baseline and is skipped) with their toy settings."""
    from ldm.ae_flags import load_ae_config

    methods = []
    for name in names:
        method = get_method(name)
        if method.name == "plain":
            continue
        path = settings_file(toy, method.name)
        if path is None:
            config, source = method.config_class(), f"{method.name} official defaults"
        elif method.name == "ae":
            config, source = load_ae_config(path), str(path.relative_to(ROOT))
        else:
            config, source = load_guidance_yaml(path, "settings")[1], str(path.relative_to(ROOT))
        methods.append(ToyMethod(method.name, method.title, config, source))
    return methods


@contextlib.contextmanager
def count_unet_evaluations(unet: torch.nn.Module) -> Iterator[list[int]]:
    """Count the samples that go through ``unet`` (a CFG step counts 2 per image, a truncated guidance pass 1)."""
    count = [0]

    def hook(module: torch.nn.Module, args: tuple) -> None:
        count[0] += int(args[0].shape[0])

    handle = unet.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


@dataclass
class MethodsResult:
    """Per benchmark and metric, each method's per-sample hits; per benchmark, seconds and UNet evaluations; the
    GenEval tasks that cannot be asked of the toy, with the words it lacks."""

    hits: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # benchmark -> method -> seconds per image
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # ... -> UNet evaluations per image
    images: dict[str, int] = field(default_factory=dict)  # benchmark -> images per method
    unaskable: dict[str, list[str]] = field(default_factory=dict)  # GenEval task -> words missing from the captions


@dataclass(frozen=True)
class MethodsPlan:
    """How many prompt-seed pairs each benchmark gets (0 skips it) and the evaluation's prompt seed."""

    n_pairs: int = 128  # (i) two subjects
    n_three: int = 128  # (i') three subjects
    n_star: int = 64  # (iii) "a * and a {colour} {shape}"
    n_geneval: int = 64  # images per GenEval task
    n_words: int = 64  # (iv) "a * and a @", (v) "a @ and a {colour} {shape}"
    seed: int = 0


BOTH = ("all subjects present", "all with the right colours")
GENEVAL_METRIC = "correct (GenEval rules)"
GENEVAL_OVERALL = "GenEval: overall (mean over the tasks asked)"


def _verdict_metrics(verdicts: Sequence[Verdict]) -> dict[str, np.ndarray]:
    return {"all subjects present": np.array([v.shapes_present for v in verdicts]),
            "all with the right colours": np.array([v.all_correct for v in verdicts])}  # fmt: skip


def _run(model: torch.nn.Module, bench: str, prompts: list[str], specs: list[str], seeds: list[int],
         methods: Sequence[ToyMethod], settings: SampleSettings, outdir: Path, result: MethodsResult,
         metrics: Callable[[Sequence[Verdict]], dict[str, np.ndarray]]) -> None:  # fmt: skip
    tag = re.sub(r"[^a-z0-9]+", "_", bench.lower().replace("'", "p")).strip("_")
    result.images[bench] = len(prompts)
    for method in [None, *methods]:
        label = "plain" if method is None else method.label
        name = f"methods_{tag}_{'plain' if method is None else method.name}"
        with count_unet_evaluations(model.model.diffusion_model) as evaluations:
            config, guidance = (None, "ae") if method is None else (method.config, method.name)
            verdicts, seconds = run_pairs(model, prompts, specs, seeds, settings, config, outdir, name, guidance)
        result.seconds.setdefault(bench, {})[label] = seconds / len(prompts)
        result.evaluations.setdefault(bench, {})[label] = evaluations[0] / len(prompts)
        for metric, hits in metrics(verdicts).items():
            result.hits.setdefault((bench, metric), {})[label] = hits


def geneval_tasks(model: torch.nn.Module, methods: Sequence[ToyMethod], settings: SampleSettings, n: int, seed: int,
                  outdir: Path, result: MethodsResult) -> None:  # fmt: skip
    """GenEval's six tasks (``n`` images each, prompt seed ``seed``); those whose words the toys' captions lack are
    recorded as unaskable, not sampled."""
    for k, tag in enumerate(TASKS):
        bench = f"GenEval: {TASK_TITLES[tag]}"
        missing = unaskable_words(tag)
        if missing:
            result.unaskable[bench] = missing
            continue
        tasks = task_prompts(tag, n, seed)
        prompts, specs = [t.prompt for t in tasks], [t.spec for t in tasks]
        seeds = [NOISE_SEEDS_METHODS["geneval"] + 1_000 * k + i for i in range(n)]

        def correct(verdicts: Sequence[Verdict], tasks: list = tasks) -> dict[str, np.ndarray]:
            return {GENEVAL_METRIC: np.array([evaluate_detections(v.detections, t)[0]
                                              for v, t in zip(verdicts, tasks, strict=True)])}  # fmt: skip

        _run(model, bench, prompts, specs, seeds, methods, settings, outdir, result, correct)


# First starting-noise seed of the benchmarks added here (sample i uses seed + i; GenEval task k: + 1000 k), disjoint
# from the evaluation's (ldm.toyworld.benchmarks.NOISE_SEEDS, 5000-40000+) and from every tuning seed (1000+,
# 50000+, 60000+, the learned words' check 80000+).
NOISE_SEEDS_METHODS: dict[str, int] = {"geneval": 100_000, "star_and_at": 110_000, "at_and_subject": 120_000}


def compare_methods(
    model: torch.nn.Module,
    model_words: torch.nn.Module | None,
    methods: Sequence[ToyMethod],
    settings: SampleSettings,
    plan: MethodsPlan,
    outdir: Path,
) -> MethodsResult:
    """Plain sampling and every method on the benchmarks of the module docstring (``model_words``: the model with the
    learned "*" and "@"; None skips the learned-word rows, and a file without "@" skips (iv) and (v)); sample grids
    go to ``outdir``."""
    result = MethodsResult()
    seed = plan.seed
    if plan.n_geneval:
        geneval_tasks(model, methods, settings, plan.n_geneval, seed, outdir, result)
    if plan.n_pairs:
        prompts, specs = subject_prompts(plan.n_pairs, 2, seed)
        seeds = [NOISE_SEEDS["two_subjects"] + i for i in range(plan.n_pairs)]
        _run(model, "(i) two subjects", prompts, specs, seeds, methods, settings, outdir, result, _verdict_metrics)
    if plan.n_three:
        prompts, specs = subject_prompts(plan.n_three, 3, seed + 1)
        seeds = [NOISE_SEEDS["three_subjects"] + i for i in range(plan.n_three)]
        _run(model, "(i') three subjects", prompts, specs, seeds, methods, settings, outdir, result, _verdict_metrics)
    if model_words is None:
        return result
    if plan.n_star:
        prompts, specs = placeholder_prompts(plan.n_star, seed + 2)
        seeds = [NOISE_SEEDS["star_and_subject"] + i for i in range(plan.n_star)]
        bench = "(iii) a * and a {colour} {shape}"
        _run(model_words, bench, prompts, specs, seeds, methods, settings, outdir, result, _verdict_metrics)
    words = getattr(getattr(model_words, "embedding_manager", None), "string_to_token_dict", {})
    if plan.n_words and "@" not in words:
        logger.warning("the learned-words file has no '@': (iv) and (v) are skipped")
    elif plan.n_words:
        n = plan.n_words
        seeds = [NOISE_SEEDS_METHODS["star_and_at"] + i for i in range(n)]
        _run(model_words, "(iv) a * and a @", ["a * and a @"] * n, ["*,@"] * n, seeds, methods, settings, outdir,
             result, _verdict_metrics)  # fmt: skip
        prompts, specs = placeholder_prompts(n, seed + 3, "@", PLACEHOLDERS["@"])
        seeds = [NOISE_SEEDS_METHODS["at_and_subject"] + i for i in range(n)]
        bench = "(v) a @ and a {colour} {shape}"
        _run(model_words, bench, prompts, specs, seeds, methods, settings, outdir, result, _verdict_metrics)
    return result
