"""Several guidance methods side by side on the same seed: one run without guidance and one per method, each with
its image, its words' maps at every step and its own loss (the explorer's "side by side" view).

The first method's run is :meth:`Explorer.run` (without and with it); every further method samples the same seed
with its own settings. Each trace records its seconds and how many samples went through the UNet (a step with
classifier-free guidance counts 2, a guidance pass 1; the run without guidance also takes one pass per step for its
maps), so the cost of a method shows beside its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ldm import inference
from ldm.explorer.session import Explorer, Progress, RunResult, RunTrace, Settings
from ldm.guidance import get_method

__all__ = ["MethodChoice", "MethodRun", "Comparison", "compare"]


@dataclass(frozen=True)
class MethodChoice:
    """A method to run and its settings: ``config`` and the flags that differ from its preset (``flags``, for the
    equivalent command; ``preset``: A&E's preset name)."""

    method: str
    config: Any
    flags: tuple[str, ...] = ()
    preset: str = "official"


@dataclass
class MethodRun:
    """One guided run of a comparison."""

    method: str  # registry name
    title: str
    trace: RunTrace
    config: Any  # its settings with the schedule scaled to the steps run
    command: str  # the txt2img command that makes it


@dataclass
class Comparison:
    """The run without guidance and one run per method, all from the same seed."""

    prompt: str
    spec: str
    labels: list[str]  # one per excited word
    plain: RunTrace
    runs: list[MethodRun]
    report: dict

    def result(self, index: int = 0) -> RunResult:
        """Without guidance against ``runs[index]`` (what the page's main pair of images shows)."""
        run = self.runs[index]
        return RunResult(self.prompt, self.spec, self.labels, self.plain, run.trace, run.config, run.command,
                         self.report, run.method)  # fmt: skip


def compare(
    explorer: Explorer,
    prompt: str,
    spec: str,
    settings: Settings,
    choices: Sequence[MethodChoice],
    progress: Progress | None = None,
) -> Comparison:
    """Sample ``prompt`` from ``settings.seed`` without guidance and with each method of ``choices`` (at least one;
    each method once) on the ``spec`` words."""
    if not choices:
        raise ValueError("pick at least one guidance method to compare")
    names = [c.method for c in choices]
    if len(set(names)) != len(names):
        raise ValueError(f"each method once: {', '.join(names)}")
    n = len(choices) + 1  # runs, for the progress bar

    def part(k: int) -> Progress | None:
        if progress is None:
            return None
        return lambda fraction, desc: progress((k + fraction * (2 if k == 0 else 1)) / n, desc)

    first = choices[0]
    main = explorer.run(prompt, spec, settings, first.config, progress=part(0), ae_flags=first.flags,
                        preset=first.preset, method=first.method)  # fmt: skip
    runs = [MethodRun(first.method, get_method(first.method).title, main.excited, main.config, main.command)]
    latent_shape = explorer.check_size(settings.H, settings.W)
    groups, _, _ = inference.resolve_batch_tokens(explorer.model, [prompt], spec)
    for k, choice in enumerate(choices[1:], start=1):
        guidance = get_method(choice.method)
        used, n_run = inference.schedule_for_run(choice.config, settings.sampler, settings.steps,
                                                 explorer.model.num_timesteps, method=guidance)  # fmt: skip

        def report_step(step: int, k: int = k, title: str = guidance.title, n_run: int = n_run) -> None:
            if progress is not None:
                progress((k + 1 + (step + 1) / n_run) / n, f"with {title}: step {step + 1}/{n_run}")

        trace = explorer.sample_trace(prompt, spec, settings, choice.method, used, latent_shape, groups[0], report_step)
        command = explorer.command(prompt, spec, settings, choice.preset, choice.flags, choice.method)
        runs.append(MethodRun(choice.method, guidance.title, trace, used, command))
    return Comparison(prompt, spec, main.labels, main.plain, runs, main.report)
