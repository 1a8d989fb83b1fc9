"""The registered guidance methods compared on a ToyWorld model: one table, every method against plain sampling on
the same prompt-seed pairs (scripts/evaluate_toyworld.py --methods plain,ae,syngen,...).

Benchmarks (the evaluation's prompts and seeds, so plain's rates are those of the toy's main section):
- (i) two subjects "a {colour} {shape} and a {colour} {shape}": all subjects present, all with the right colours;
- (i') three subjects: the same metrics;
- (iii) "a * and a {colour} {shape}" with the learned "*": both present.
Each method runs with its ToyWorld settings, chosen on tuning seeds (``configs/toyworld2/<file>.yaml`` for the second
toy, else ``configs/toyworld/<file>.yaml``; ``<file>`` is the registry name, ``attend_and_excite`` for A&E), or its
official defaults when it has none. Every method excites the prompt's shape words (and ``*``); a method that reads
the prompt itself (SynGen's modifier-noun pairs) parses it from there. Differences are paired over prompt-seed pairs
with 95% bootstrap intervals; cost is the time per image relative to plain and the UNet evaluations per image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.guidance import get_method
from ldm.guidance.flags import load_guidance_yaml
from ldm.toyworld.benchmarks import NOISE_SEEDS, run_pairs
from ldm.toyworld.prompts import placeholder_prompts, subject_prompts
from ldm.toyworld.sampling import ROOT, SampleSettings
from ldm.toyworld.stats import bootstrap_diff

logger = logging.getLogger(__name__)

__all__ = ["ToyMethod", "toy_methods", "MethodsResult", "compare_methods", "methods_table", "count_unet_evaluations"]


@dataclass(frozen=True)
class ToyMethod:
    """A guidance method with the settings it runs with on a toy."""

    name: str  # registry name
    label: str  # the table's column
    config: Any
    source: str  # where the settings came from


def settings_file(toy: str, name: str) -> Path | None:
    """The toy's settings file of a method (the second toy's own, else the first toy's), or None."""
    file = "attend_and_excite" if name == "ae" else name
    folders = ["toyworld2", "toyworld"] if toy == "2" else ["toyworld"]
    return next((p for p in (ROOT / "configs" / d / f"{file}.yaml" for d in folders) if p.is_file()), None)


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
    """Per benchmark and metric, each method's per-sample hits; per benchmark, seconds and UNet evaluations."""

    hits: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # benchmark -> method -> seconds per image
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # ... -> UNet evaluations per image


def _run(model: torch.nn.Module, bench: str, prompts: list[str], specs: list[str], seeds: list[int],
         methods: Sequence[ToyMethod], settings: SampleSettings, outdir: Path, result: MethodsResult,
         metrics: Sequence[str]) -> None:  # fmt: skip
    tag = bench.split(")")[0].strip("(").replace("'", "p")
    for method in [None, *methods]:
        label = "plain" if method is None else method.label
        name = f"methods_{tag}_{'plain' if method is None else method.name}"
        with count_unet_evaluations(model.model.diffusion_model) as evaluations:
            config, guidance = (None, "ae") if method is None else (method.config, method.name)
            verdicts, seconds = run_pairs(model, prompts, specs, seeds, settings, config, outdir, name, guidance)
        result.seconds.setdefault(bench, {})[label] = seconds / len(prompts)
        result.evaluations.setdefault(bench, {})[label] = evaluations[0] / len(prompts)
        per_metric = {
            "all subjects present": np.array([v.shapes_present for v in verdicts]),
            "all with the right colours": np.array([v.all_correct for v in verdicts]),
        }
        for metric in metrics:
            result.hits.setdefault((bench, metric), {})[label] = per_metric[metric]


def compare_methods(
    model: torch.nn.Module,
    model_inv: torch.nn.Module | None,
    methods: Sequence[ToyMethod],
    settings: SampleSettings,
    n_pairs: int,
    n_three: int,
    n_star: int,
    seed: int,
    outdir: Path,
) -> MethodsResult:
    """Plain sampling and every method on the benchmarks of the module docstring (``model_inv``: the model with the
    learned "*"; None skips (iii)); sample grids go to ``outdir``."""
    result = MethodsResult()
    both = ("all subjects present", "all with the right colours")
    prompts, specs = subject_prompts(n_pairs, 2, seed)
    seeds = [NOISE_SEEDS["two_subjects"] + i for i in range(n_pairs)]
    _run(model, "(i) two subjects", prompts, specs, seeds, methods, settings, outdir, result, both)
    if n_three:
        prompts, specs = subject_prompts(n_three, 3, seed + 1)
        seeds = [NOISE_SEEDS["three_subjects"] + i for i in range(n_three)]
        _run(model, "(i') three subjects", prompts, specs, seeds, methods, settings, outdir, result, both)
    if model_inv is not None and n_star:
        prompts, specs = placeholder_prompts(n_star, seed + 2)
        seeds = [NOISE_SEEDS["star_and_subject"] + i for i in range(n_star)]
        bench = "(iii) a * and a {colour} {shape}"
        _run(model_inv, bench, prompts, specs, seeds, methods, settings, outdir, result, both[:1])
    return result


def methods_table(result: MethodsResult, methods: Sequence[ToyMethod]) -> list[str]:
    """The markdown table: one column per method; a method's cell is its rate and its paired difference to plain."""
    labels = ["plain", *(m.label for m in methods)]
    lines = ["| benchmark | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for (bench, metric), hits in result.hits.items():
        cells = [f"{hits['plain'].mean():.2f}"]
        for label in labels[1:]:
            mean, lo, hi = bootstrap_diff(hits["plain"], hits[label])
            cells.append(f"{hits[label].mean():.2f} ({mean:+.2f} [{lo:+.2f}, {hi:+.2f}])")
        lines.append(f"| {bench} | {metric} (n={len(hits['plain'])}) | " + " | ".join(cells) + " |")
    for bench, seconds in result.seconds.items():
        base = seconds["plain"]
        lines.append(f"| {bench} | time per image (x plain) | {base:.2f} s | "
                     + " | ".join(f"{seconds[label] / base:.2f}x" for label in labels[1:]) + " |")  # fmt: skip
        evaluations = result.evaluations[bench]
        lines.append(f"| {bench} | UNet evaluations per image | "
                     + " | ".join(f"{evaluations[label]:.0f}" for label in labels) + " |")  # fmt: skip
    return lines
