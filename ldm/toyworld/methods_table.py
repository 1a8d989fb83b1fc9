"""The markdown of the guidance-methods comparison (``scripts/evaluate_toyworld.py --methods``): one table with a column
per method, the GenEval-style task rows (counting and position marked as not asked when the toy's captions lack
their words), GenEval's overall score, the subject and learned-word rows, the cost per image, and per method the rows
where it helps or hurts (its paired 95% interval excludes 0); then the cost of each benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ldm.toyworld.geneval import TASK_TITLES, TASKS
from ldm.toyworld.methods import GENEVAL_METRIC, GENEVAL_OVERALL, MethodsResult, ToyMethod
from ldm.toyworld.stats import bootstrap_diff, bootstrap_diff_of_means

__all__ = ["methods_table", "cost_table", "method_verdicts", "verdict_lines", "idle_benchmarks"]

Effect = tuple[float, float, float]  # mean, 95% low, 95% high


def _cell(rate: float, effect: Effect, idle: bool = False) -> str:
    mean, lo, hi = effect
    text = f"{rate:.2f} ({mean:+.2f} [{lo:+.2f}, {hi:+.2f}])"
    text = f"**{text}**" if lo > 0 or hi < 0 else text
    return text + " (did not act)" if idle else text


def idle_benchmarks(result: MethodsResult, label: str) -> list[str]:
    """The benchmarks where a method never guided: as many UNet evaluations per image as plain sampling (e.g. SynGen
    on a prompt without a modifier-noun pair); its images there are plain's."""
    return [b for b, counts in result.evaluations.items() if label != "plain" and counts[label] == counts["plain"]]


def _geneval_rows(result: MethodsResult, labels: list[str]) -> dict[str, list[np.ndarray]]:
    """Per method, the per-image hits of each GenEval task asked (for the overall score)."""
    tasks = [k for k in result.hits if k[1] == GENEVAL_METRIC]
    return {label: [result.hits[k][label] for k in tasks] for label in labels}


def _effects(result: MethodsResult, labels: list[str]) -> dict[tuple[str, str], dict[str, tuple[float, Effect]]]:
    """Per row and method: its rate and its paired difference to plain (GenEval's overall: stratified by task)."""
    rows: dict[tuple[str, str], dict[str, tuple[float, Effect]]] = {}
    for key, hits in result.hits.items():
        rows[key] = {label: (float(hits[label].mean()), bootstrap_diff(hits["plain"], hits[label]))
                     for label in labels}  # fmt: skip
    tasks = _geneval_rows(result, labels)
    if tasks["plain"]:
        rows[(GENEVAL_OVERALL, "mean of the task scores")] = {
            label: (float(np.mean([h.mean() for h in tasks[label]])), bootstrap_diff_of_means(tasks["plain"],
                                                                                              tasks[label]))
            for label in labels
        }  # fmt: skip
    return rows


def method_verdicts(result: MethodsResult, methods: Sequence[ToyMethod]) -> dict[str, tuple[list[str], list[str]]]:
    """Per method label, the rows (benchmark: metric) where it helps and where it hurts: the paired 95% interval of its
    difference to plain lies above / below 0 (GenEval's overall is not counted: it repeats its tasks)."""
    labels = ["plain", *(m.label for m in methods)]
    effects = _effects(result, labels)
    out = {}
    for label in labels[1:]:
        helps, hurts = [], []
        for (bench, metric), cells in effects.items():
            if bench == GENEVAL_OVERALL:
                continue
            _, (_, lo, hi) = cells[label]
            name = bench if metric == GENEVAL_METRIC else f"{bench}: {metric}"
            (helps if lo > 0 else hurts if hi < 0 else []).append(name)
        out[label] = (helps, hurts)
    return out


def methods_table(result: MethodsResult, methods: Sequence[ToyMethod]) -> list[str]:
    """The table: one column per method; a cell is the rate and the paired difference to plain [95% interval], in bold
    where the interval excludes 0, "(did not act)" where the method never guided (:func:`idle_benchmarks`)."""
    labels = ["plain", *(m.label for m in methods)]
    effects = _effects(result, labels)
    idle = {label: idle_benchmarks(result, label) for label in labels}
    lines = ["| benchmark | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    order = list(result.hits)
    geneval = [k for k in order if k[0].startswith("GenEval")]
    rest = [k for k in order if not k[0].startswith("GenEval")]
    geneval_benches = [k[0] for k in geneval]
    asked_then_not = sorted({*geneval_benches, *result.unaskable}, key=_task_position)
    for bench in asked_then_not:
        if bench in result.unaskable:
            words = ", ".join(f"`{w}`" for w in result.unaskable[bench])
            lines.append(f"| {bench} | not asked: the toy's captions have no {words} | " + " | ".join(
                ["-"] * len(labels)) + " |")  # fmt: skip
            continue
        key = (bench, GENEVAL_METRIC)
        cells = [f"{effects[key]['plain'][0]:.2f}"] + [_cell(*effects[key][label], bench in idle[label])
                                                       for label in labels[1:]]  # fmt: skip
        lines.append(f"| {bench} | {GENEVAL_METRIC} (n={result.images[bench]}) | " + " | ".join(cells) + " |")
    overall = (GENEVAL_OVERALL, "mean of the task scores")
    if overall in effects:
        n_tasks = len(geneval)
        cells = [f"{effects[overall]['plain'][0]:.2f}"] + [_cell(*effects[overall][label]) for label in labels[1:]]
        lines.append(f"| {GENEVAL_OVERALL} | mean of the {n_tasks} task scores | " + " | ".join(cells) + " |")
    for key in rest:
        cells = [f"{effects[key]['plain'][0]:.2f}"] + [_cell(*effects[key][label], key[0] in idle[label])
                                                       for label in labels[1:]]  # fmt: skip
        lines.append(f"| {key[0]} | {key[1]} (n={result.images[key[0]]}) | " + " | ".join(cells) + " |")
    if result.seconds:
        images = {b: result.images[b] for b in result.seconds}
        total = sum(images.values())

        def pooled(table: dict[str, dict[str, float]], label: str) -> float:
            return sum(table[b][label] * images[b] for b in table) / total

        base = pooled(result.seconds, "plain")
        times = [f"{pooled(result.seconds, label) / base:.2f}x" for label in labels[1:]]
        lines.append(f"| all benchmarks | time per image (x plain) | {base:.2f} s | " + " | ".join(times) + " |")
        calls = [f"{pooled(result.evaluations, label):.0f}" for label in labels]
        lines.append("| all benchmarks | UNet evaluations per image | " + " | ".join(calls) + " |")
    verdicts = method_verdicts(result, methods)
    counts = [f"{len(verdicts[label][0])} / {len(verdicts[label][1])}" for label in labels[1:]]
    lines.append("| all rows | helps / hurts (rows whose interval excludes 0) | | " + " | ".join(counts) + " |")
    return lines


def verdict_lines(result: MethodsResult, methods: Sequence[ToyMethod]) -> list[str]:
    """One line per method: where it helps, where it hurts, or that it does not help on this toy."""
    lines = []
    for label, (helps, hurts) in method_verdicts(result, methods).items():
        if not helps:
            text = f"- **{label} does not help on this toy**: no row improves beyond its 95% interval"
        else:
            text = f"- {label} helps on {'; '.join(helps)}"
        if hurts:
            text += f"; it hurts on {'; '.join(hurts)}"
        idle = idle_benchmarks(result, label)
        if idle:
            text += f"; it did not act on {'; '.join(idle)} (plain's UNet evaluations: nothing to guide)"
        lines.append(text + ".")
    return lines


def cost_table(result: MethodsResult, methods: Sequence[ToyMethod]) -> list[str]:
    """Per benchmark: plain's seconds per image, each method's time relative to plain, UNet evaluations per image."""
    labels = ["plain", *(m.label for m in methods)]
    lines = ["| benchmark | plain s/image | " + " | ".join(f"{label} time (x plain)" for label in labels[1:])
             + " | " + " | ".join(f"{label} UNet/image" for label in labels) + " |",
             "|---|---|" + "---|" * (2 * len(labels) - 1)]  # fmt: skip
    for bench, seconds in result.seconds.items():
        base = seconds["plain"]
        evaluations = result.evaluations[bench]
        lines.append(f"| {bench} | {base:.2f} | " + " | ".join(f"{seconds[label] / base:.2f}x" for label in labels[1:])
                     + " | " + " | ".join(f"{evaluations[label]:.0f}" for label in labels) + " |")  # fmt: skip
    return lines


def _task_position(bench: str) -> int:
    titles = [f"GenEval: {TASK_TITLES[t]}" for t in TASKS]
    return titles.index(bench) if bench in titles else len(titles)
