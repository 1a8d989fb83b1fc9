"""Small line plots drawn with PIL (no plotting library needed): the A&E loss and each word's maximum attention per
step, for the run without A&E (dashed) and with it (solid); steps where A&E refined the latent are shaded. For
several methods side by side: each run's attention loss and each method's own loss per step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
BAND = "#fce8c8"  # steps with refinement
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 40, 12, 34, 30


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]  # None: a step without a value (drawn as a gap)
    color: str
    dashed: bool = False


def _dashed(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], color: str, width: int) -> None:
    (x0, y0), (x1, y1) = a, b
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    dash = 6.0
    n = max(1, int(length // dash))
    for k in range(0, n, 2):
        s, e = k / n, min(1.0, (k + 1) / n)
        draw.line([(x0 + (x1 - x0) * s, y0 + (y1 - y0) * s), (x0 + (x1 - x0) * e, y0 + (y1 - y0) * e)], color, width)


def panel(
    title: str,
    series: Sequence[Series],
    shaded: Sequence[int] = (),
    size: tuple[int, int] = (420, 260),
    y_range: tuple[float, float] = (0.0, 1.0),
) -> Image.Image:
    """One plot: ``series`` over steps 1..n (the x axis), ``shaded`` steps (0-based) marked by a band."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    n = max((len(s.values) for s in series), default=0)
    x0, x1, y0, y1 = MARGIN_LEFT, w - MARGIN_RIGHT, h - MARGIN_BOTTOM, MARGIN_TOP
    lo, hi = y_range

    def xy(step: int, value: float) -> tuple[float, float]:
        fx = step / max(n - 1, 1)
        fy = (min(max(value, lo), hi) - lo) / (hi - lo)
        return x0 + fx * (x1 - x0), y0 - fy * (y0 - y1)

    half = (x1 - x0) / max(n - 1, 1) / 2
    for step in shaded:
        cx = xy(step, lo)[0]
        draw.rectangle([max(x0, cx - half), y1, min(x1, cx + half), y0], fill=BAND)
    for k in range(5):  # y grid and ticks
        v = lo + (hi - lo) * k / 4
        _, y = xy(0, v)
        draw.line([(x0, y), (x1, y)], "#dddddd")
        draw.text((4, y - 6), f"{v:.2f}", fill="black", font=font)
    ticks = sorted({0, n - 1, *range(0, n, max(1, n // 5))}) if n else []
    for step in ticks:
        x, _ = xy(step, lo)
        draw.line([(x, y0), (x, y0 + 3)], "black")
        draw.text((x - 4, y0 + 5), str(step + 1), fill="black", font=font)
    draw.rectangle([x0, y1, x1, y0], outline="black")
    draw.text((x0, 10), title, fill="black", font=font)
    draw.text((x1 - 24, h - 12), "step", fill="black", font=font)
    for s in series:
        points = [None if v is None else xy(i, v) for i, v in enumerate(s.values)]  # None: no value at that step
        for a, b in zip(points, points[1:]):
            if a is None or b is None:
                continue
            if s.dashed:
                _dashed(draw, a, b, s.color, 2)
            else:
                draw.line([a, b], s.color, 2)
        for x, y in (p for p in points if p is not None):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=s.color)
    return img


def legend(entries: Sequence[tuple[str, str, bool]], width: int) -> Image.Image:
    """A strip with one sample line and label per ``(label, color, dashed)`` entry, wrapped to ``width``."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, row = [], 8, 0
    for label, color, dashed in entries:
        item_w = 30 + int(probe.textlength(label, font=font)) + 16
        if x + item_w > width and x > 8:
            x, row = 8, row + 1
        placed.append((x, row, label, color, dashed))
        x += item_w
    img = Image.new("RGB", (width, 18 * (row + 1) + 4), "white")
    draw = ImageDraw.Draw(img)
    for x, row, label, color, dashed in placed:
        y = 10 + 18 * row
        (_dashed if dashed else lambda d, a, b, c, w: d.line([a, b], c, w))(draw, (x, y), (x + 24, y), color, 2)
        draw.text((x + 30, y - 6), label, fill="black", font=font)
    return img


def run_plot(
    labels: Sequence[str],
    plain_loss: Sequence[float],
    ae_loss: Sequence[float],
    plain_max: Sequence[Sequence[float]],
    ae_max: Sequence[Sequence[float]],
    refinement: Sequence[int],
) -> Image.Image:
    """The loss panel and the per-word max-attention panel side by side, with a legend under them.

    ``*_max`` are per step, per word (``[steps][K]``); ``refinement`` the A&E run's iterations per step.
    """
    shaded = [i for i, r in enumerate(refinement) if r]
    loss = panel("A&E loss  max_k (1 - m_k)", [Series("without", plain_loss, "#555555", True),
                                               Series("with", ae_loss, "#000000")], shaded)  # fmt: skip
    words = []
    for k, label in enumerate(labels):
        color = PALETTE[k % len(PALETTE)]
        words.append(Series(label, [s[k] for s in plain_max], color, True))
        words.append(Series(label, [s[k] for s in ae_max], color))
    scores = panel("max attention per word  m_k", words, shaded)
    entries = [("loss", "#000000", False)] + [(w, PALETTE[k % len(PALETTE)], False) for k, w in enumerate(labels)]
    entries += [("dashed: without A&E", "#555555", True), ("solid: with A&E", "#555555", False)]
    if shaded:
        entries.append(("band: refinement", BAND, False))
    key = legend(entries, loss.width + scores.width)
    out = Image.new("RGB", (loss.width + scores.width, loss.height + key.height), "white")
    out.paste(loss, (0, 0))
    out.paste(scores, (loss.width, 0))
    out.paste(key, (0, loss.height))
    return out


def methods_plot(
    titles: Sequence[str], attention_loss: Sequence[Sequence[float]], own_loss: Sequence[Sequence[float | None]]
) -> Image.Image:
    """Runs side by side: per step, each run's attention loss max_k (1 - m_k) from the maps shown (the same measure
    for every method), and each method's own loss at its guided steps (each on its own scale: one axis up to the
    largest); one colour per run, the run without guidance dashed."""
    colors = ["#555555", *PALETTE]

    def series(values: Sequence[Sequence[float | None]]) -> list[Series]:
        return [Series(t, v, colors[k % len(colors)], k == 0) for k, (t, v) in enumerate(zip(titles, values))]

    same = panel("attention loss  max_k (1 - m_k)", series(attention_loss))
    top = max([v for vs in own_loss for v in vs if v is not None] or [1.0])
    own = panel(f"each method's own loss (guided steps; axis to {top:.3g})", series(own_loss),
                y_range=(0.0, top if top > 0 else 1.0))  # fmt: skip
    key = legend([(t, colors[k % len(colors)], k == 0) for k, t in enumerate(titles)], same.width + own.width)
    out = Image.new("RGB", (same.width + own.width, same.height + key.height), "white")
    out.paste(same, (0, 0))
    out.paste(own, (same.width, 0))
    out.paste(key, (0, same.height))
    return out
