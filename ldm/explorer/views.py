"""What the page shows of a run: enlarged images, each word's map over its image at a step, the plot, a summary.

Pure functions of a :class:`~ldm.explorer.session.RunResult`; the overlays are ``--save_attention``'s
(:func:`ldm.guidance.visualize.overlay`).
"""

from __future__ import annotations

from PIL import Image

from ldm.explorer.comparison import Comparison
from ldm.explorer.plot import methods_plot, run_plot
from ldm.explorer.session import RunResult, RunTrace
from ldm.guidance import get_method
from ldm.guidance.visualize import overlay

__all__ = ["enlarged", "maps_at", "step_caption", "plot_of", "summary", "side_by_side_images", "side_by_side_maps",
           "side_by_side_plot", "side_by_side_summary"]  # fmt: skip


def enlarged(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled up by a whole factor (nearest neighbour, the pixels stay sharp) to about ``size`` wide."""
    factor = max(1, size // max(image.width, 1))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def maps_at(trace: RunTrace, labels: list[str], step: int, size: int) -> list[tuple[Image.Image, str]]:
    """Each word's map over the run's image, captioned with the word and its max attention m_k.

    ``step`` 0..n-1 is the map at the latent entering that step; ``step >= n`` the final maps (``--save_attention``).
    """
    maps = trace.final_maps if step >= len(trace.maps) else trace.maps[step]  # [K, r, r]
    base = enlarged(trace.image, size)
    return [(overlay(base, m), f"{label} (max {float(m.max()):.2f})") for m, label in zip(maps, labels)]


def step_caption(result: RunResult, step: int) -> str:
    """What the step slider points at."""
    n = result.steps
    if step >= n:
        return f"Final maps: the final latent at t=1 (as --save_attention draws them), after {n} steps"
    trace = result.excited
    parts = [f"Step {step + 1}/{n} (t={trace.timesteps[step]})"]
    parts.append("A&E updated the latent" if trace.guided[step] else "no A&E update at this step")
    if trace.refinement[step]:
        parts.append(f"{trace.refinement[step]} refinement iterations")
    return ", ".join(parts)


def plot_of(result: RunResult) -> Image.Image:
    """The loss and per-word max attention of both runs per step (:func:`ldm.explorer.plot.run_plot`)."""
    return run_plot(
        result.labels, result.plain.loss, result.excited.loss, result.plain.max_attention,
        result.excited.max_attention, result.excited.refinement,
    )  # fmt: skip


def _schedule(config: object, steps: int) -> str:
    """The method's schedule in words, from the fields it has (A&E's and its successors')."""
    parts = []
    if hasattr(config, "max_iter_to_alter"):
        parts.append(f"updates at steps < {config.max_iter_to_alter}")
    for name in ("thresholds", "iterative_refinement_steps"):
        value = getattr(config, name, None)
        if value:
            parts.append(f"{name.replace('_', ' ')} {dict(value) if isinstance(value, dict) else list(value)}")
    if hasattr(config, "max_refinement_steps"):
        parts.append(f"up to {config.max_refinement_steps} refinement iterations")
    return f"**Schedule over {steps} steps:** " + (", ".join(parts) or "none")


def summary(result: RunResult) -> str:
    """Markdown: the refinement iterations spent, the final scores, the schedule, the equivalent command."""
    per_step = ", ".join(f"step {i + 1}: {r}" for i, r in enumerate(result.excited.refinement) if r) or "none"
    final_plain = result.plain.max_attention[-1]
    final_ae = result.excited.max_attention[-1]
    scores = "; ".join(f"**{w}** {a:.2f} → {b:.2f}" for w, a, b in zip(result.labels, final_plain, final_ae))
    short = "A&E" if result.method == "ae" else get_method(result.method).title
    return "\n".join([
        f"**Refinement iterations:** {result.refinement_total} ({per_step})  ",
        f"**Max attention at the last step, without → with {short}:** {scores}  ",
        _schedule(result.config, result.steps),
        "",
        "The same run from the command line:",
        "```",
        result.command,
        "```",
    ])  # fmt: skip


def _runs(comparison: Comparison) -> list[tuple[str, RunTrace]]:
    return [("without guidance", comparison.plain), *((r.title, r.trace) for r in comparison.runs)]


def side_by_side_images(comparison: Comparison, size: int) -> list[tuple[Image.Image, str]]:
    """Every run's image (the same seed), captioned with the method and its final attention loss."""
    return [(enlarged(trace.image, size), f"{title}: loss {trace.loss[-1]:.2f}") for title, trace in _runs(comparison)]


def side_by_side_maps(comparison: Comparison, size: int) -> list[tuple[Image.Image, str]]:
    """Every run's final maps, word after word (``--save_attention``'s), captioned "method: word (max m)"."""
    return [(image, f"{title}: {caption}") for title, trace in _runs(comparison)
            for image, caption in maps_at(trace, comparison.labels, len(trace.maps), size)]  # fmt: skip


def side_by_side_plot(comparison: Comparison) -> Image.Image:
    """Each run's attention loss and each method's own loss per step (:func:`ldm.explorer.plot.methods_plot`)."""
    runs = _runs(comparison)
    own = [[None] * len(comparison.plain.maps), *(r.trace.method_loss for r in comparison.runs)]
    return methods_plot([t for t, _ in runs], [trace.loss for _, trace in runs], own)


def side_by_side_summary(comparison: Comparison) -> str:
    """Markdown: per run, the final max attention per word, the method's last loss, refinement iterations, seconds
    and UNet evaluations; then each method's command."""
    words = " | ".join(f"max attention: {w}" for w in comparison.labels)
    lines = [f"| run | {words} | own loss (last guided step) | refinement iterations | seconds | UNet evaluations |",
             "|---|" + "---|" * (len(comparison.labels) + 4)]  # fmt: skip
    for title, trace in _runs(comparison):
        own = [v for v in trace.method_loss if v is not None]
        scores = " | ".join(f"{v:.2f}" for v in trace.max_attention[-1])
        lines.append(f"| {title} | {scores} | {f'{own[-1]:.3g}' if own else '-'} | {sum(trace.refinement)} | "
                     f"{trace.seconds:.1f} | {trace.unet_evaluations} |")  # fmt: skip
    lines += ["", "The run without guidance takes one extra pass per step for its maps. The same runs from the "
              "command line:", "```", *(r.command for r in comparison.runs), "```"]  # fmt: skip
    return "\n".join(lines)
