"""The ToyWorld evaluation's report: its section of docs/results.md (one per toy, between markers, so each toy's
rerun replaces only its own), the bar plot, and reading a section's two-subject headline back (scripts/demo.sh)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ldm.models.diffusion.samplers import SAMPLERS
from ldm.outputs import save_image, save_text
from ldm.toyworld.benchmarks import TOYS, Method
from ldm.toyworld.sampling import ROOT
from ldm.toyworld.stats import Diff, Row, wilson


@dataclass(frozen=True)
class RunDescription:
    """What a results section says about how it was made."""

    title: str  # the toy's title (the section heading)
    command: str  # the command line that made it
    ckpt: str  # model weights
    config: str  # inference config
    steps: int  # sampling steps
    scale: float  # classifier-free guidance scale
    finetune_config: str  # inversion config
    embedding: Path  # the learned "*"
    plot: str  # the plot file (linked by its name, next to the results file)
    sampler: str = "ddim"  # a name of ldm.models.diffusion.samplers.SAMPLERS


def rel_path(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def markers(toy: str, kind: str = "results") -> tuple[str, str]:
    """The comment lines around toy ``toy``'s section of the results file (``kind``: "results", the toy's main
    evaluation, or another section of the toy such as "methods")."""
    return f"<!-- toyworld{toy} {kind}: begin -->", f"<!-- toyworld{toy} {kind}: end -->"


def merge_section(text: str, toy: str, section: str, kind: str = "results") -> str:
    """``text`` (a results file, possibly empty) with toy ``toy``'s section replaced by ``section`` (or appended);
    the other toys' sections and anything outside the markers are kept, and the main sections stay in toy order
    (other kinds of section are appended at the end when new)."""
    begin, end = markers(toy, kind)
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        return before + block + rest.split(end, 1)[1]
    if not text.strip():
        return "# ToyWorld results\n\n" + block + "\n"
    later = [t for t in sorted(TOYS) if t > toy and markers(t)[0] in text] if kind == "results" else []
    if later:  # insert before the first later toy's section
        at = text.index(markers(later[0])[0])
        return text[:at] + block + "\n\n" + text[at:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def results_section(
    run: RunDescription,
    methods: Sequence[Method],
    rows: Sequence[Row],
    diffs: Sequence[Diff],
    timings: dict[str, float],
) -> str:
    """The markdown section of one evaluation: how it was made, the rates table, the paired differences, timings."""
    described = "; ".join(
        f"`{label}`: `{rel_path(path)}` at {cfg.attention_res}x{cfg.attention_res} (softmax_scale"
        f" {cfg.softmax_scale:g}, step size {cfg.scale_factor:g}, thresholds {dict(cfg.thresholds)} of a"
        f" {cfg.schedule_steps}-step schedule rescaled to {run.steps} steps"
        f"{', exciting the colour words too' if words == 'colours' else ''})"
        for label, cfg, words, path in methods
    )
    lines = [
        f"## {run.title}",
        "",
        "Made by",
        "",
        "```",
        run.command.strip(),
        "```",
        "",
        f"Model: `{rel_path(run.ckpt)}` with `{rel_path(run.config)}`; {SAMPLERS[run.sampler].title} {run.steps} steps,"
        f" eta 0, guidance scale"
        f" {run.scale}; one fixed seed per prompt (the same starting noise with and without A&E). A&E excites the"
        f" shape words (and `*`): {described}. Inversion: `main.py` with `{rel_path(run.finetune_config)}`,"
        f' embeddings `{rel_path(run.embedding)}`. Verdicts: `ldm/toyworld/detect.py` ("*" counts as the held-out'
        " star; a sample misses a subject when some named shape is not found on its own object). Prompts and seeds"
        " are fixed in the script (evaluation seeds, disjoint from every tuning seed).",
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
    lines += ["", f"![results {run.title}]({Path(run.plot).name})", ""]
    return "\n".join(lines)


def write_results(path: str | Path, toy: str, section: str, kind: str = "results") -> Path:
    """Replace toy ``toy``'s section (of ``kind``) of the results file ``path`` (created when missing)."""
    path = Path(path)
    return save_text(merge_section(path.read_text() if path.is_file() else "", toy, section, kind), path)


def draw_plot(rows: Sequence[Row], path: Path, title: str = "ToyWorld") -> None:
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


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _interval(text: str) -> tuple[float, float]:
    lo, hi = text.strip("[]").split(",")
    return float(lo), float(hi)


def evaluation_headline(results: str, toy: str) -> list[str]:
    """The two-subject headline of toy ``toy``'s section of a results file (scripts/evaluate_toyworld.py):
    all-subjects-present and missing-subject rates, plain and the main A&E setting (Wilson intervals), and the
    paired-bootstrap gain. The missing-subject rate is 1 - the all-subjects (shapes) rate where it has no row."""
    begin, end = markers(toy)
    if begin not in results:
        return [f"(no ToyWorld {toy} section in the results file: run scripts/evaluate_toyworld.py --toy {toy})"]
    section = results.split(begin, 1)[1].split(end, 1)[0]
    bench = "(i) two subjects"
    rates, diffs = {}, {}
    for line in section.splitlines():
        cells = _cells(line) if line.startswith("| ") else []
        if len(cells) == 6 and cells[0] == bench:
            rates[(cells[1], cells[2])] = (float(cells[3]), *_interval(cells[4]), int(cells[5]))
        elif len(cells) == 5 and cells[0] == bench:
            diffs[cells[1]] = (float(cells[2]), *_interval(cells[3]))
    key = next((d for d in diffs if d.endswith(" - plain, all subjects (shapes)")), None)
    if key is None:
        return [f"(the ToyWorld {toy} section has no two-subject A&E row)"]
    method = key.split(" - plain,")[0]
    out = [f"Evaluation (docs/results.md, {rates[('plain', 'all subjects (shapes)')][3]} prompt-seed pairs, two"
           f" subjects, plain vs {method}; 95% intervals):"]  # fmt: skip
    for metric in ("all subjects (shapes)", "missing a subject"):
        parts = []
        for m in ("plain", method):
            if (m, metric) in rates:
                r, lo, hi, _ = rates[(m, metric)]
            else:  # derived from the all-subjects row
                r, lo, hi, _ = rates[(m, "all subjects (shapes)")]
                r, lo, hi = 1 - r, 1 - hi, 1 - lo
            parts.append(f"{m} {r:.2f} [{lo:.2f}, {hi:.2f}]")
        d = diffs.get(f"{method} - plain, {metric}")
        if d is None and metric == "missing a subject":  # the all-subjects difference, negated
            mean, lo, hi = diffs[key]
            d = (-mean, -hi, -lo)
        change = f"; change {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]" if d else ""
        out.append(f"  {metric + ':':24} " + ", ".join(parts) + change)
    for other in diffs:  # the other A&E settings of the section: their all-subjects rate and change
        if other != key and other.endswith(" - plain, all subjects (shapes)"):
            name = other.split(" - plain,")[0]
            r, lo, hi, _ = rates[(name, "all subjects (shapes)")]
            mean, dlo, dhi = diffs[other]
            change = f"change {mean:+.2f} [{dlo:+.2f}, {dhi:+.2f}]"
            out.append(f"  also {name}: all subjects {r:.2f} [{lo:.2f}, {hi:.2f}]; {change}")
    return out
