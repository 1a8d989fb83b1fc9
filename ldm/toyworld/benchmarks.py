"""The ToyWorld benchmarks of Attend-and-Excite and textual inversion (run by scripts/evaluate_toyworld.py).

- (o) single subjects, plain sampling: the share drawn as asked;
- (i) / (i') two / three subjects: missing subjects, plain against each A&E method, paired by seed;
- (ii) inversion: "a photo of *" with the learned "*" against its init word, with and without A&E;
- (iii) "a * and a {colour} {shape}": plain against A&E, with the learned "*".

Every sample has a fixed seed (`NOISE_SEEDS`; the prompt families are drawn from the evaluation seed, see
`ldm.toyworld.prompts`), so a rerun reproduces the numbers on the same machine. `plain_neglect` is the caption-noise
sweep's measurement (scripts/toyworld2_neglect.py), with tuning seeds disjoint from the evaluation's.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ldm.ae_flags import load_ae_config
from ldm.guidance.attend_excite.config import AttendExciteConfig
from ldm.toyworld.prompts import colour_and_shape_specs, placeholder_prompts, single_subject_prompts, subject_prompts
from ldm.toyworld.sampling import (
    AE_CONFIG,
    HELDOUT_DIR,
    INFERENCE_CONFIG,
    ROOT,
    WEIGHTS,
    SampleSettings,
    Verdict,
    judge,
    sample_images,
    save_grid,
)
from ldm.toyworld.stats import Diff, Row, bootstrap_diff

logger = logging.getLogger(__name__)

OFFICIAL_AE_CONFIG = ROOT / "configs" / "guidance" / "attend_and_excite.yaml"

# First starting-noise seed of each benchmark (sample i uses seed + i); tuning used other ones (the first toy's A&E
# preset: noise 50000+; ToyWorld 2's caption-noise sweep: 60000+; the shipped-model tests: 1000+).
NOISE_SEEDS: dict[str, int] = {
    "single": 5_000,
    "two_subjects": 10_000,
    "three_subjects": 20_000,
    "photo_of_star": 30_000,
    "star_and_subject": 40_000,
}


@dataclass(frozen=True)
class Toy:
    """A bundled ToyWorld model and the defaults of its evaluation."""

    title: str
    config: Path  # inference config
    ckpt: Path  # exported weights
    finetune: Path  # inversion config (main.py)
    ae_config: Path  # the A&E setting under test
    attention_res: str  # map sides to compare, main first
    colour_words: bool  # also run A&E exciting the colour words
    second_ae_config: Path | None = None  # another A&E setting compared with plain, at its own map side


TOYS = {
    "1": Toy("ToyWorld 1 (BERT tower, clean captions)", INFERENCE_CONFIG, WEIGHTS,
             ROOT / "configs" / "toyworld" / "finetune.yaml", AE_CONFIG, "8,4", True),
    "2": Toy("ToyWorld 2 (SD-v1 family: CLIP tower, caption noise)",
             ROOT / "configs" / "toyworld2" / "txt2img-inference.yaml",
             ROOT / "models" / "toyworld2" / "txt2img.safetensors",
             ROOT / "configs" / "toyworld2" / "finetune.yaml", OFFICIAL_AE_CONFIG, "16", False, AE_CONFIG),
}  # fmt: skip

# (label, A&E config, which words it excites: "shapes" or "colours" (colour and shape words), the config's file)
Method = tuple[str, AttendExciteConfig, str, str]


def ae_methods(
    ae_config: str | Path,
    official_config: str | Path,
    resolutions: Sequence[int],
    colour_words: bool,
    second_ae_config: str | Path | None = None,
) -> list[Method]:
    """The A&E methods compared with plain sampling: the setting under test at each map side in ``resolutions``, the
    official defaults at the main (first) side when the setting under test is not already them, (with
    ``colour_words``) the setting under test exciting the colour words too, and ``second_ae_config`` at its own map
    side ("A&E <folder>/<name> RxR")."""
    official_is_main = Path(ae_config).resolve() == Path(official_config).resolve()
    name = "A&E official" if official_is_main else "A&E"
    methods: list[Method] = [
        (f"{name} {r}x{r}", load_ae_config(ae_config, attention_res=r), "shapes", str(ae_config)) for r in resolutions
    ]
    main_res = resolutions[0]
    if not official_is_main:
        official = load_ae_config(official_config, attention_res=main_res)
        methods.append((f"A&E official {main_res}x{main_res}", official, "shapes", str(official_config)))
    if colour_words:
        methods.append((f"{name} {main_res}x{main_res}, colour+shape words", methods[0][1], "colours", str(ae_config)))
    if second_ae_config:
        second = load_ae_config(second_ae_config)
        label = f"A&E {Path(second_ae_config).parent.name}/{Path(second_ae_config).stem}"
        methods.append(
            (f"{label} {second.attention_res}x{second.attention_res}", second, "shapes", str(second_ae_config))
        )
    return methods


def sample_pairs(
    model: torch.nn.Module,
    prompts: Sequence[str],
    specs: Sequence[str],
    seeds: Sequence[int],
    settings: SampleSettings,
    ae_config: AttendExciteConfig | None,
    guidance: str = "ae",
) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` of all prompts (grouped by token spec so a batch shares one spec), in prompt order,
    with the guidance method ``guidance`` and its settings ``ae_config`` (None: plain sampling)."""
    order = sorted(range(len(prompts)), key=lambda i: specs[i] if ae_config is not None else "")
    images = torch.zeros(len(prompts), 3, settings.size, settings.size)  # [N, 3, H, W]
    groups = itertools.groupby(order, key=lambda i: specs[i] if ae_config is not None else "")
    for spec, idx in groups:
        idx = list(idx)
        images[idx] = sample_images(
            model, [prompts[i] for i in idx], [seeds[i] for i in idx], settings,
            ae_tokens=spec or None, ae_config=ae_config, guidance=guidance,
        )  # fmt: skip
    return images


def run_pairs(
    model: torch.nn.Module,
    prompts: Sequence[str],
    specs: Sequence[str],
    seeds: Sequence[int],
    settings: SampleSettings,
    ae_config: AttendExciteConfig | None,
    outdir: Path,
    name: str,
    guidance: str = "ae",
) -> tuple[list[Verdict], float]:
    """Sample all prompts (:func:`sample_pairs`); verdicts in prompt order, and the seconds it took. The first 32
    images are written as ``outdir/{name}.png``."""
    t0 = time.time()
    images = sample_pairs(model, prompts, specs, seeds, settings, ae_config, guidance)
    verdicts = judge(images, prompts)
    save_grid(images[:32], outdir / f"{name}.png", nrow=8)
    elapsed = time.time() - t0
    logger.info("%s: %d samples in %.0f s", name, len(prompts), elapsed)
    return verdicts, elapsed


def invert(
    steps: int, logdir: Path, seed: int, ckpt: str, finetune: str | Path, data_root: Path = HELDOUT_DIR,
    init_word: str = "object", placeholder: str = "*", name: str = "eval_star",
) -> Path:  # fmt: skip
    """Learn ``placeholder`` ("*" for the held-out images by default; `ldm.toyworld.concepts` for "@") with main.py
    (config ``finetune``) on the images in ``data_root``; returns the embeddings file."""
    cmd = [
        sys.executable, "main.py", "-t", "--base", str(finetune), "-n", name,
        "--logdir", str(logdir), "--accelerator", "cpu", "--seed", str(seed), "--actual_resume", ckpt,
        "--data_root", str(data_root), "--init_word", init_word, "--max_steps", str(steps),
        "lightning.trainer.enable_progress_bar=false",
    ]  # fmt: skip
    if placeholder != "*":
        cmd[-1:-1] = ["--placeholder_string", placeholder]
    logger.info("Inversion: %s", " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)
    found = sorted(logdir.glob(f"*_{name}/checkpoints/embeddings.pt"))
    if not found:
        raise FileNotFoundError(f"the inversion wrote no embeddings.pt under {logdir}")
    return found[-1]


def subject_metrics(verdicts: Sequence[Verdict]) -> dict[str, np.ndarray]:
    """Per-sample hits ``[N]`` of the multi-subject metrics."""
    shapes = np.array([v.shapes_present for v in verdicts])
    few = np.array([len(v.detections) < len(v.wanted) for v in verdicts])  # an object is not drawn at all
    return {"missing a subject": ~shapes, "fewer objects than subjects": few, "all subjects (shapes)": shapes,
            "all subjects, right colours": np.array([v.all_correct for v in verdicts])}  # fmt: skip


@dataclass
class Benchmarks:
    """One evaluation: the sampler settings, the A&E methods compared with plain sampling, the folder of the sample
    grids, and what was measured so far (table rows, paired differences, sampling seconds per run)."""

    settings: SampleSettings
    methods: list[Method]
    outdir: Path
    rows: list[Row] = field(default_factory=list)
    diffs: list[Diff] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def compare(
        self,
        model: torch.nn.Module,
        bench: str,
        prompts: Sequence[str],
        specs: Sequence[str],
        seeds: Sequence[int],
        tag: str,
    ) -> None:
        """Plain sampling against every A&E method on the same prompt-seed pairs."""
        plain, self.timings[f"{tag} plain"] = run_pairs(
            model, prompts, specs, seeds, self.settings, None, self.outdir, f"{tag}_plain"
        )
        base = subject_metrics(plain)
        for metric, hits in base.items():
            self.rows.append(Row(bench, "plain", metric, hits))
        for k, (label, cfg, words, _) in enumerate(self.methods):
            name = f"{tag}_ae{k}_{cfg.attention_res}"
            method_specs = specs if words == "shapes" else colour_and_shape_specs(list(prompts))
            verdicts, seconds = run_pairs(model, prompts, method_specs, seeds, self.settings, cfg, self.outdir, name)
            self.timings[f"{tag} {label}"] = seconds
            for metric, hits in subject_metrics(verdicts).items():
                self.rows.append(Row(bench, label, metric, hits))
                self.diffs.append((bench, f"{label} - plain, {metric}", bootstrap_diff(base[metric], hits)))

    def single_subjects(self, model: torch.nn.Module, n: int) -> None:
        """(o) ``n`` single-subject prompts, plain sampling: the share drawn as asked."""
        single = single_subject_prompts(n)
        seeds = [NOISE_SEEDS["single"] + i for i in range(len(single))]
        verdicts, self.timings["single plain"] = run_pairs(
            model, single, single, seeds, self.settings, None, self.outdir, "single_plain"
        )
        self.rows.append(Row("(o) one subject", "plain", "drawn as asked", np.array([v.all_correct for v in verdicts])))

    def subjects(self, model: torch.nn.Module, n_pairs: int, n_three: int, seed: int, three_subjects: str) -> None:
        """(i) ``n_pairs`` two-subject prompts (prompt seed ``seed``); then (i') ``n_three`` three-subject prompts
        (prompt seed ``seed + 1``) when ``three_subjects`` is "yes", or "auto" and plain sampling shows all
        subjects of (i) in >= 90% of the samples."""
        prompts, specs = subject_prompts(n_pairs, 2, seed)
        seeds = [NOISE_SEEDS["two_subjects"] + i for i in range(len(prompts))]
        self.compare(model, "(i) two subjects", prompts, specs, seeds, "two_subjects")
        plain_rate = next(
            r.rate for r in self.rows if r.benchmark.startswith("(i)") and r.metric == "all subjects (shapes)"
        )
        if three_subjects == "yes" or (three_subjects == "auto" and plain_rate >= 0.9):
            prompts3, specs3 = subject_prompts(n_three, 3, seed + 1)
            seeds3 = [NOISE_SEEDS["three_subjects"] + i for i in range(len(prompts3))]
            self.compare(model, "(i') three subjects", prompts3, specs3, seeds3, "three_subjects")

    def photo_of_star(self, model: torch.nn.Module, model_inv: torch.nn.Module, n: int) -> None:
        """(ii) ``n`` samples of "a photo of *": is the held-out star drawn? "*" as its init word (``model``) and
        learned (``model_inv``), each without and with the main A&E method exciting "*"."""
        photo = ["a photo of *"] * n
        seeds = [NOISE_SEEDS["photo_of_star"] + i for i in range(n)]
        preset = self.methods[0][1]  # the A&E setting under test at the main map side, exciting "*"
        star: dict[str, np.ndarray] = {}
        for label, m, ae in (
            ("init word", model, None),  # "*" = its init word "object"
            ("init word + A&E", model, preset),
            ("learned *", model_inv, None),
            ("learned * + A&E", model_inv, preset),
        ):
            images = sample_images(m, photo, seeds, self.settings, ae_tokens="*" if ae else None, ae_config=ae)
            save_grid(images[:32], self.outdir / f"photo_of_star_{label.replace(' ', '_').replace('*', 'star')}.png")
            star[label] = np.array([v.all_correct for v in judge(images, photo)])
            self.rows.append(Row("(ii) a photo of *", label, "star found", star[label]))
        for a, b in (
            ("init word", "learned *"),
            ("init word + A&E", "learned * + A&E"),
            ("learned *", "learned * + A&E"),
        ):
            self.diffs.append(("(ii) a photo of *", f"{b} - {a}, star found", bootstrap_diff(star[a], star[b])))

    def star_and_subject(self, model_inv: torch.nn.Module, n: int, seed: int) -> None:
        """(iii) ``n`` prompts "a * and a {colour} {shape}" (prompt seed ``seed + 2``) with the learned "*"."""
        prompts, specs = placeholder_prompts(n, seed + 2)
        seeds = [NOISE_SEEDS["star_and_subject"] + i for i in range(n)]
        self.compare(model_inv, "(iii) a * and a {colour} {shape}", prompts, specs, seeds, "star_and_subject")


def plain_neglect(
    model: torch.nn.Module, n: int, prompt_seed: int, noise_seed: int, settings: SampleSettings
) -> tuple[list[Verdict], list[int]]:
    """Plain sampling of ``n`` two-subject prompts (`subject_prompts` from ``prompt_seed``; sample i from noise seed
    ``noise_seed + i``): the detector's verdicts and the seeds."""
    prompts, _ = subject_prompts(n, 2, prompt_seed)
    seeds = [noise_seed + i for i in range(n)]
    images = sample_images(model, prompts, seeds, settings, progress=True)
    return judge(images, prompts), seeds
