"""Success against cost of the samplers on the ToyWorld models (``scripts/evaluate_toyworld.py --sampler_rows``).

One command measures one (toy, sampler, steps) setting on the two-subject benchmark (i) (the same prompt-seed pairs
as the full evaluation), plain and with one A&E setting: the share of images showing every subject, with its 95%
Wilson interval, the UNet passes per image and the sampling seconds per image. Its rows replace the same setting's
rows in ``docs/results_samplers.json``; the section "Samplers" of ``docs/results.md`` (between its own markers) and
the plot ``docs/results_samplers.png`` are rebuilt from every row there, so a sweep is one command per setting.

UNet passes are counted with a forward hook on the UNet, in sample rows: a denoising step with classifier-free
guidance is 2 rows per image (unconditional and conditional); a guidance pass (A&E's truncated forward, then its
backward) is 1 row per image and is counted apart (passes run with gradients enabled).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig
from ldm.outputs import save_image, save_text
from ldm.toyworld.benchmarks import NOISE_SEEDS, sample_pairs, subject_metrics
from ldm.toyworld.prompts import subject_prompts
from ldm.toyworld.sampling import SampleSettings, judge
from ldm.toyworld.stats import wilson

logger = logging.getLogger(__name__)

BEGIN, END = "<!-- samplers results: begin -->", "<!-- samplers results: end -->"


@dataclass(frozen=True)
class SamplerRow:
    """One measured setting: the all-subjects rate and the cost per image."""

    toy: str
    sampler: str
    steps: int
    method: str  # "plain" or "A&E <setting>"
    n: int  # prompt-seed pairs
    hits: int  # images showing every subject (shapes)
    denoise_rows: float  # UNet sample rows per image of the denoising passes (CFG: 2 per step)
    guidance_rows: float  # UNet sample rows per image of the guidance passes (each with a backward)
    seconds: float  # sampling CPU seconds per image (the process's CPU time; decoding included, detection not)
    wall_seconds: float  # sampling wall-clock seconds per image
    command: str
    date: str
    threads: int

    @property
    def key(self) -> tuple[str, str, int, str]:
        return self.toy, self.sampler, self.steps, self.method

    @property
    def rate(self) -> float:
        return self.hits / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)


@dataclass
class PassCount:
    """UNet forward calls seen by :func:`count_unet_passes`, in sample rows."""

    denoise_rows: int = 0
    guidance_rows: int = 0


@contextmanager
def count_unet_passes(unet: torch.nn.Module) -> Iterator[PassCount]:
    """Count the UNet's forward calls while the block runs (rows with gradients enabled are guidance passes)."""
    count = PassCount()

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        rows = int(args[0].shape[0])
        if torch.is_grad_enabled():
            count.guidance_rows += rows
        else:
            count.denoise_rows += rows

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


@contextmanager
def timed() -> Iterator[list[float]]:
    """(CPU seconds of this process, wall-clock seconds) of the block, in the list once it ends. On a shared machine
    the CPU time of a one-thread run is the steadier measure: other processes lengthen the wall time only."""
    out: list[float] = []
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        out += [time.process_time() - cpu, time.perf_counter() - wall]


def measure_setting(
    model: torch.nn.Module,
    toy: str,
    settings: SampleSettings,
    ae_config: AttendExciteConfig,
    ae_label: str,
    n_pairs: int,
    seed: int,
    command: str,
) -> list[SamplerRow]:
    """Benchmark (i)'s ``n_pairs`` two-subject pairs (prompt seed ``seed``) with ``settings``' sampler and steps,
    plain and with ``ae_config``: the two rows."""
    prompts, specs = subject_prompts(n_pairs, 2, seed)
    seeds = [NOISE_SEEDS["two_subjects"] + i for i in range(len(prompts))]
    sample_pairs(model, prompts[:1], specs[:1], seeds[:1], dataclasses.replace(settings, steps=2), None)  # warm-up
    rows = []
    for method, cfg in (("plain", None), (f"A&E {ae_label}", ae_config)):
        with count_unet_passes(model.model.diffusion_model) as count, timed() as seconds:
            images = sample_pairs(model, prompts, specs, seeds, settings, cfg)
        hits = subject_metrics(judge(images, prompts))["all subjects (shapes)"]
        n = len(prompts)
        rows.append(SamplerRow(
            toy=toy, sampler=settings.sampler, steps=settings.steps, method=method, n=n, hits=int(hits.sum()),
            denoise_rows=count.denoise_rows / n, guidance_rows=count.guidance_rows / n, seconds=seconds[0] / n,
            wall_seconds=seconds[1] / n, command=command, date=datetime.date.today().isoformat(),
            threads=torch.get_num_threads(),
        ))  # fmt: skip
        logger.info("%s %d steps, %s: all present %d/%d, %.3f CPU s/image (%.3f wall)", settings.sampler,
                    settings.steps, method, rows[-1].hits, n, rows[-1].seconds, rows[-1].wall_seconds)  # fmt: skip
    return rows


def merge_rows(path: Path, rows: Sequence[SamplerRow]) -> list[SamplerRow]:
    """The rows of ``path`` (a JSON list, created when missing) with ``rows`` replacing those of the same setting."""
    old = [SamplerRow(**r) for r in json.loads(path.read_text())] if path.is_file() else []
    keys = {r.key for r in rows}
    merged = [r for r in old if r.key not in keys] + list(rows)
    merged.sort(key=lambda r: (r.toy, r.method != "plain", r.method, r.seconds))
    save_text(json.dumps([asdict(r) for r in merged], indent=1) + "\n", path)
    return merged


def _reference(rows: Sequence[SamplerRow], row: SamplerRow) -> SamplerRow | None:
    """DDIM 50 with the same toy and method (the time reference)."""
    return next((r for r in rows if (r.toy, r.sampler, r.steps, r.method) == (row.toy, "ddim", 50, row.method)), None)


def section(rows: Sequence[SamplerRow], plot_name: str) -> str:
    """The markdown of the samplers section: one table per toy, the DPM++ 2M 20-step check, the plot."""
    lines = [
        "## Samplers: success against time (two subjects, all present)",
        "",
        "Made by one command per (toy, sampler, steps); each writes its two rows (plain, A&E) to",
        "`docs/results_samplers.json` (with the exact command) and rebuilds this section and its plot:",
        "",
        "```",
        "for toy in 1 2; do",
        '  for run in "ddim 50" "ddim 25" "dpmpp_2m 10" "dpmpp_2m 15" "dpmpp_2m 20" "euler_a 20"; do',
        "    set -- $run",
        "    nice -n 5 python scripts/evaluate_toyworld.py --toy $toy --sampler $1 --steps $2 --sampler_rows",
        "  done",
        "done",
        "```",
        "",
        "Benchmark (i) of the sections above (two-subject prompts, one fixed seed each, the same pairs for every row),",
        "plain and with A&E; `all present`: every named shape found on its own object (95% Wilson interval). UNet rows",
        "per image: denoising (classifier-free guidance: 2 per step) + A&E guidance passes (truncated forward and",
        "backward, counted apart). CPU s/image: the process's CPU time for sampling and decoding per image, torch on",
        "one thread (`--threads 1`), on this shared 2-core machine (wall-clock time, also in the rows file, depends on",
        "the other sessions' load; CPU time less so, but figures are still noisy). `x DDIM 50`: CPU time relative to",
        "DDIM 50 with the same method.",
        "",
    ]
    for toy in sorted({r.toy for r in rows}):
        mine = [r for r in rows if r.toy == toy]
        first = mine[0]
        lines += [f"### ToyWorld {toy} ({first.n} prompt-seed pairs; {first.date}; torch threads {first.threads})", ""]
        lines += ["| sampler | steps | method | all present | 95% CI | UNet rows/image | CPU s/image | x DDIM 50 |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for r in mine:
            lo, hi = r.interval
            ref = _reference(rows, r)
            ratio = f"{r.seconds / ref.seconds:.2f}" if ref else "-"
            passes = f"{r.denoise_rows:.0f}" + (f" + {r.guidance_rows:.1f}" if r.guidance_rows else "")
            lines.append(f"| {r.sampler} | {r.steps} | {r.method} | {r.rate:.3f} | [{lo:.3f}, {hi:.3f}] | {passes} |"
                         f" {r.seconds:.3f} | {ratio} |")  # fmt: skip
        lines.append("")
        lines += _check_lines(mine, rows)
    lines += [f"![samplers: success against time]({plot_name})", ""]
    return "\n".join(lines)


def _check_lines(mine: Sequence[SamplerRow], rows: Sequence[SamplerRow]) -> list[str]:
    """Whether DPM++ 2M + A&E at 20 steps is within DDIM 50 + A&E's interval at <= 0.45x its time."""
    out = []
    for r in mine:
        ref = _reference(rows, r)
        if (r.sampler, r.steps) != ("dpmpp_2m", 20) or r.method == "plain" or ref is None:
            continue
        lo, hi = ref.interval
        inside = lo <= r.rate <= hi
        ratio = r.seconds / ref.seconds
        out += [f"DPM++ 2M 20 steps + {r.method}: all present {r.rate:.3f} against DDIM 50's {ref.rate:.3f} "
                f"[{lo:.3f}, {hi:.3f}] ({'inside' if inside else 'outside'} its interval), at {ratio:.2f}x its time "
                f"per image ({'<=' if ratio <= 0.45 else '>'} 0.45x).", ""]  # fmt: skip
    return out


def write_section(results: Path, text: str) -> Path:
    """Replace (or append) the samplers section of the results file."""
    old = results.read_text() if results.is_file() else "# ToyWorld results\n"
    block = f"{BEGIN}\n{text.strip()}\n{END}"
    if BEGIN in old and END in old:
        before, rest = old.split(BEGIN, 1)
        new = before + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    return save_text(new, results)


def draw_plot(rows: Sequence[SamplerRow], path: Path) -> None:
    """All-present rate (95% interval) against seconds per image, one panel per toy, plain grey and A&E blue."""
    from PIL import Image, ImageDraw

    toys = sorted({r.toy for r in rows})
    pw, ph, margin = 520, 360, 60
    img = Image.new("RGB", (len(toys) * (pw + margin) + margin, ph + 2 * margin), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for k, toy in enumerate(toys):
        mine = [r for r in rows if r.toy == toy]
        x0, y0 = margin + k * (pw + margin), margin
        t_max = max(r.seconds for r in mine) * 1.1
        d.rectangle([x0, y0, x0 + pw, y0 + ph], outline=(0, 0, 0))
        title = f"ToyWorld {toy}: all subjects present vs CPU seconds per image (grey: plain, blue: A&E)"
        d.text((x0, y0 - 40), title, fill=(0, 0, 0))
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = y0 + ph - int(ph * frac)
            d.line([x0, y, x0 + pw, y], fill=(225, 225, 225))
            d.text((x0 - 30, y - 6), f"{frac:.2f}", fill=(0, 0, 0))
        for tick in np.linspace(0, t_max, 5):
            x = x0 + int(pw * tick / t_max)
            d.text((x - 10, y0 + ph + 6), f"{tick:.2f}", fill=(0, 0, 0))
        d.text((x0 + pw // 2 - 40, y0 + ph + 24), "CPU seconds per image", fill=(0, 0, 0))
        for r in mine:
            x = x0 + int(pw * r.seconds / t_max)
            lo, hi = r.interval
            colour = (140, 140, 140) if r.method == "plain" else (50, 100, 210)
            d.line([x, y0 + ph - int(ph * lo), x, y0 + ph - int(ph * hi)], fill=colour, width=2)
            y = y0 + ph - int(ph * r.rate)
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            d.text((x + 6, y - 6), f"{r.sampler} {r.steps}", fill=colour)
    save_image(img, path)
