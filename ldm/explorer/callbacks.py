"""The page's callbacks as plain functions (no Gradio here): each takes the :class:`Explorer` and the widgets' values
and returns the values to show, so they are tested without a browser. :mod:`ldm.explorer.app` wires them to widgets
and turns their exceptions into the page's error line (the scripts' own messages)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from ldm import inference
from ldm.explorer.chips import selection_for, spec_for
from ldm.explorer.comparison import Comparison, MethodChoice, compare
from ldm.explorer.session import Explorer, Progress, RunResult, Settings
from ldm.explorer.views import (
    enlarged,
    maps_at,
    plot_of,
    side_by_side_images,
    side_by_side_maps,
    side_by_side_plot,
    side_by_side_summary,
    step_caption,
    summary,
)
from ldm.guidance.tokens import format_token_table, token_table

__all__ = ["ChipView", "RunView", "StepView", "chip_view", "spec_from_chips", "chips_from_spec", "run", "at_step",
           "load_embedding", "method_choice"]  # fmt: skip

Gallery = list[tuple[Image.Image, str]]


@dataclass
class ChipView:
    """The chip widget: ``choices`` ``[(label, value)]`` (value: the chip's index as text) and the ``selected``."""

    choices: list[tuple[str, str]]
    selected: list[str]
    table: str  # the scripts' token table line (position: token)


@dataclass
class StepView:
    """The maps of both runs at one step, and what the step is."""

    plain_maps: Gallery
    excited_maps: Gallery
    caption: str


@dataclass
class RunView:
    """Everything a run puts on the page: the main pair (without and with the picked method) and every run side by
    side (the picked method first, then the others ticked)."""

    result: RunResult
    plain_image: Image.Image
    excited_image: Image.Image
    step: StepView  # the final maps
    last_step: int  # the slider's maximum (= the final maps)
    plot: Image.Image
    summary: str
    comparison: Comparison | None = None
    compare_images: Gallery | None = None
    compare_maps: Gallery | None = None
    compare_plot: Image.Image | None = None
    compare_summary: str = ""


def chip_view(explorer: Explorer, prompt: str, spec: str = "") -> ChipView:
    """The prompt's chips, with those the current ``--ae_tokens`` string names selected."""
    chips = explorer.chips(prompt)
    choices = [(c.label, str(i)) for i, c in enumerate(chips) if c.selectable]
    ids, placeholders = inference.prompt_tokens(explorer.model, prompt)
    table = format_token_table(token_table(ids, explorer.model.cond_stage_model.tokenizer, placeholders))
    cut = [c.text for c in chips if c.kind == "truncated"]
    if cut:
        table += f"  (cut off by the text encoder's {len(ids)}-token limit, not seen by the model: {' '.join(cut)})"
    return ChipView(choices, [str(i) for i in selection_for(chips, spec)], table)


def spec_from_chips(explorer: Explorer, prompt: str, selected: Sequence[str]) -> str:
    """The ``--ae_tokens`` string of the clicked chips."""
    return spec_for(explorer.chips(prompt), [int(v) for v in selected])


def chips_from_spec(explorer: Explorer, prompt: str, spec: str) -> list[str]:
    """The chips a typed ``--ae_tokens`` string selects."""
    return [str(i) for i in selection_for(explorer.chips(prompt), spec)]


def method_choice(
    explorer: Explorer, method: str, preset: str, fields: Mapping[str, str], method_fields: Mapping[str, str]
) -> MethodChoice:
    """A method and its settings from the page: A&E from its preset and ``--ae_<field>`` boxes (``fields``), any
    other method from its ``--g_<field>`` boxes (``method_fields``)."""
    if method == "ae":
        config, flags = explorer.ae_config(preset, dict(fields))
        return MethodChoice("ae", config, tuple(flags), preset)
    config, flags = explorer.method_config(method, dict(method_fields))
    return MethodChoice(method, config, tuple(flags))


def run(
    explorer: Explorer,
    prompt: str,
    spec: str,
    settings: Settings,
    preset: str,
    fields: Mapping[str, str],
    display_size: int = 256,
    progress: Progress | None = None,
    method: str = "ae",
    method_fields: Mapping[str, Mapping[str, str]] | None = None,
    others: Sequence[str] = (),
) -> RunView:
    """Run without guidance, with ``method`` and with each of ``others`` (the same seed); the images enlarged to
    ``display_size``, the final maps, the plots, the summaries. ``fields``: A&E's boxes; ``method_fields``: every
    other method's boxes by method."""
    method_fields = method_fields or {}
    names = [method, *(m for m in dict.fromkeys(others) if m != method)]
    choices = [method_choice(explorer, m, preset, fields, method_fields.get(m, {})) for m in names]
    comparison = compare(explorer, prompt, spec, settings, choices, progress=progress)
    result = comparison.result(0)
    return RunView(
        result=result,
        plain_image=enlarged(result.plain.image, display_size),
        excited_image=enlarged(result.excited.image, display_size),
        step=at_step(result, result.steps, display_size),
        last_step=result.steps,
        plot=plot_of(result),
        summary=summary(result),
        comparison=comparison,
        compare_images=side_by_side_images(comparison, display_size // 2),
        compare_maps=side_by_side_maps(comparison, display_size // 2),
        compare_plot=side_by_side_plot(comparison),
        compare_summary=side_by_side_summary(comparison),
    )


def at_step(result: RunResult, step: int, display_size: int = 256) -> StepView:
    """Both runs' maps at ``step`` (0-based; ``result.steps`` and above: the final maps)."""
    step = max(0, int(step))
    return StepView(
        maps_at(result.plain, result.labels, step, display_size),
        maps_at(result.excited, result.labels, step, display_size),
        step_caption(result, step),
    )


def load_embedding(explorer: Explorer, path: str) -> str:
    """Load an embeddings file; the message naming the placeholders now in the prompt's vocabulary."""
    names = explorer.load_embedding(path)
    return f"Loaded {path}: placeholders {', '.join(names)} (type them in the prompt)"
