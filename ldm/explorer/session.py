"""The explorer's logic, without a browser: one loaded model, its prompt chips, the guidance settings, and runs.

A run samples the same seed twice through :func:`ldm.inference.sample_prompts`, the scripts' one sampling routine:
without guidance and with a registered guidance method (Attend-and-Excite by default; ``method=`` any other). Both
runs pass the selected words to a guidance object with an ``on_maps`` callback, so each step's token maps come from
the guidance pass itself (the run without guidance uses A&E with no update and no refinement: the latent is never
changed, and each step runs one truncated pass for its maps). The final maps are those ``--save_attention`` draws
(one pass on the final latent at ``t = 1``). Each step's loss of the method comes from its own records.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ldm import inference
from ldm.ae_flags import (
    AE_FIELDS,
    DEFAULT_AE_CONFIG,
    add_attend_excite_args,
    attend_excite_config,
    load_ae_config,
    model_family,
)
from ldm.explorer.chips import Chip, prompt_chips
from ldm.explorer.records import RunResult, RunTrace, Settings, field_text
from ldm.guidance import get_method, method_names
from ldm.guidance.attend_excite.config import AttendExciteConfig, display_config
from ldm.guidance.attend_excite.maps import capture_token_maps
from ldm.guidance.engine import StepMaps
from ldm.guidance.flags import add_guidance_args, guidance_from_args
from ldm.models.description import describe_config
from ldm.models.diffusion.samplers import SAMPLER_NAMES
from ldm.sampler_flags import sampler_from_flags
from ldm.validation import check_scale

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PRESETS: dict[str, Path] = {
    "official": DEFAULT_AE_CONFIG,
    "ToyWorld": REPO / "configs" / "toyworld" / "attend_and_excite.yaml",
    "earlier fork": REPO / "configs" / "guidance" / "seed_fork.yaml",
}
SAMPLERS = SAMPLER_NAMES  # the registry (ldm.models.diffusion.samplers)
Progress = Callable[[float, str], None]

__all__ = ["PRESETS", "SAMPLERS", "Settings", "RunTrace", "RunResult", "Explorer", "field_text", "repo_relative"]


def _flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explorer", exit_on_error=False, add_help=False)
    add_attend_excite_args(parser, save_attention=False)
    add_guidance_args(parser)
    return parser


class Explorer:
    """A loaded model and what the page asks of it (every method raises the scripts' errors for bad input)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config_path: str | Path,
        ckpt_path: str | Path,
        ae_config_path: str | Path | None = None,
        embedding_path: str | Path | None = None,
    ) -> None:
        self.model = model
        self.config_path = str(config_path)
        self.ckpt_path = str(ckpt_path)
        self.embedding_path = str(embedding_path) if embedding_path else None
        self.presets = dict(PRESETS)
        if ae_config_path and Path(ae_config_path).resolve() not in {p.resolve() for p in PRESETS.values()}:
            self.presets["--ae_config"] = Path(ae_config_path)
        self.default_preset = next(
            (k for k, p in self.presets.items() if ae_config_path and p.resolve() == Path(ae_config_path).resolve()),
            "official",
        )
        self.description = describe_config(self.config_path)
        self.factor = self.description.first_stage_factor
        self.script = "scripts/txt2img.py" if self.description.family == "ldm" else "scripts/stable_txt2img.py"

    @classmethod
    def load(
        cls,
        config_path: str | Path,
        ckpt_path: str | Path,
        ae_config_path: str | Path | None = None,
        embedding_path: str | Path | None = None,
        device: str | None = None,
    ) -> Explorer:
        model = inference.load_model(config_path, ckpt_path, embedding_path, inference.pick_device(device))
        return cls(model, config_path, ckpt_path, ae_config_path, embedding_path)

    # --- the page's inputs ---------------------------------------------------------------------------------------
    @property
    def default_size(self) -> int:
        """The image side the model was trained for: latent size times the autoencoder's factor."""
        return int(self.model.image_size) * self.factor

    def default_settings(self, seed: int = 42, steps: int | None = None, scale: float | None = None) -> Settings:
        """The settings a page starts with: the model description's steps, scale and image side (ToyWorld: 25 steps,
        scale 3; SDXL: scale 5; other models: 50 steps, scale 7.5), unless given."""
        defaults = self.description.defaults
        return Settings(
            steps=steps or defaults.steps, scale=scale or defaults.scale, seed=seed,
            H=defaults.image_side, W=defaults.image_side,
        )  # fmt: skip

    def placeholders(self) -> list[str]:
        manager = getattr(self.model, "embedding_manager", None)
        return sorted(manager.string_to_token_dict) if manager is not None else []

    def chips(self, prompt: str) -> list[Chip]:
        """The prompt's word chips (see :mod:`ldm.explorer.chips`)."""
        ids, placeholders = inference.prompt_tokens(self.model, prompt)
        return prompt_chips(prompt, ids, self.model.cond_stage_model.tokenizer, placeholders)

    def preset_fields(self, preset: str) -> dict[str, str]:
        """The A&E fields of a preset, in flag syntax."""
        if preset not in self.presets:
            raise ValueError(f"unknown A&E preset {preset!r}; choose one of {sorted(self.presets)}")
        config = load_ae_config(self.presets[preset])
        return {name: field_text(getattr(config, name)) for name in AE_FIELDS}

    def ae_config(self, preset: str, fields: dict[str, str]) -> tuple[AttendExciteConfig, list[str]]:
        """The preset with the page's fields on top, parsed as the ``--ae_<field>`` flags are; and the flags that
        differ from the preset (for the equivalent command)."""
        base = self.preset_fields(preset)
        changed = [a for name, value in fields.items() if str(value).strip() != base.get(name)
                   for a in (f"--ae_{name}", str(value).strip())]  # fmt: skip
        try:
            args = _flag_parser().parse_args(["--ae_config", str(self.presets[preset]), *changed])
        except argparse.ArgumentError as err:
            raise ValueError(str(err)) from err
        return attend_excite_config(args), changed

    def methods(self) -> list[str]:
        """The registered guidance methods the page offers (all but plain sampling, which every run shows)."""
        return [name for name in method_names() if name != "plain"]

    def _method_base(self, method: str) -> list[str]:
        """The flags a method's settings start from: ``--guidance`` and, for a toy with its own settings of the
        method (``configs/toyworld[2]/<method>.yaml``, the model description's), ``--guidance_config`` that file."""
        toy_file = self.description.method_settings(method)
        return ["--guidance", method, "--ae_tokens", "x", *(["--guidance_config", str(toy_file)] if toy_file else [])]

    def method_fields(self, method: str) -> dict[str, str]:
        """A method's settings for this model (a toy's own settings file, else the family's preset, else the
        method's defaults), in ``--g_<field>`` syntax."""
        guidance = get_method(method)
        config = guidance_from_args(_flag_parser().parse_args(self._method_base(method)),
                                    model_family(self.config_path)).config  # fmt: skip
        return {name: field_text(getattr(config, name)) for name in guidance.field_names()}

    def method_config(self, method: str, fields: dict[str, str]) -> tuple[Any, list[str]]:
        """A method's settings with the page's fields on top, parsed as the ``--g_<field>`` flags are; and the flags
        that differ from its preset (for the equivalent command). A&E: :meth:`ae_config` of the default preset."""
        if method == "ae":
            return self.ae_config(self.default_preset, fields)
        base = self.method_fields(method)
        changed = [a for name, value in fields.items() if str(value).strip() != base.get(name)
                   for a in (f"--g_{name}", str(value).strip())]  # fmt: skip
        try:
            args = _flag_parser().parse_args([*self._method_base(method), *changed])
        except argparse.ArgumentError as err:
            raise ValueError(str(err)) from err
        return guidance_from_args(args, model_family(self.config_path)).config, changed

    def load_embedding(self, path: str | Path) -> list[str]:
        """Load an embeddings file (any supported format) into the model's embedding manager; its placeholders."""
        manager = getattr(self.model, "embedding_manager", None)
        if manager is None:
            raise ValueError(
                f"--embedding_path {path}: --config {self.config_path} builds no embedding manager; use a config "
                "with personalization_config"
            )
        manager.load(path)
        self.embedding_path = str(path)
        return self.placeholders()

    def check_size(self, H: int, W: int) -> tuple[int, int, int]:
        """The latent shape ``(C, H/f, W/f)`` for an image size; a size the UNet cannot take is an error."""
        unet = self.model.model.diffusion_model
        step = self.factor * 2 ** (len(getattr(unet, "channel_mult", [1])) - 1)
        if H < step or W < step or H % step or W % step:
            raise ValueError(
                f"--H {H} --W {W}: the image size must be a positive multiple of {step} for this model "
                f"(autoencoder factor {self.factor} times the UNet's downsampling); e.g. {self.default_size}"
            )
        return int(self.model.channels), H // self.factor, W // self.factor

    # --- a run -------------------------------------------------------------------------------------------------
    def run(
        self,
        prompt: str,
        spec: str,
        settings: Settings,
        config: Any,
        progress: Progress | None = None,
        ae_flags: Sequence[str] = (),
        preset: str = "official",
        method: str = "ae",
    ) -> RunResult:
        """Sample ``prompt`` from ``settings.seed`` without guidance and with the guidance ``method`` (its settings:
        ``config``) on the ``spec`` words (``--ae_tokens``). ``ae_flags``: the flags that differ from the preset
        (``--ae_<field>`` for A&E, ``--g_<field>`` for other methods), for the equivalent command."""
        guidance = get_method(method)
        if not prompt.strip():
            raise ValueError("--prompt: type a prompt first")
        if not spec.strip():
            raise ValueError("--ae_tokens: select at least one word (click its chip) or type words/positions")
        if settings.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {settings.sampler!r}; use one of {list(SAMPLERS)}")
        sampler_from_flags(argparse.Namespace(sampler=settings.sampler, ddim_eta=settings.eta))  # eta: DDIM only
        if settings.steps < 1:
            raise ValueError(f"--ddim_steps {settings.steps}: need at least one step")
        check_scale(settings.scale)  # NaN / infinity: refused; 0: a warning that the prompt is ignored
        latent_shape = self.check_size(settings.H, settings.W)
        groups, _, report = inference.resolve_batch_tokens(self.model, [prompt], spec)  # the CLI's errors
        used, n_run = inference.schedule_for_run(config, settings.sampler, settings.steps, self.model.num_timesteps,
                                                 method=guidance)  # fmt: skip
        # no update and no refinement at any step: the latent is never changed, the maps are still captured
        watch_only = dataclasses.replace(display_config(used), max_iter_to_alter=0, thresholds={})
        short = "A&E" if guidance.name == "ae" else guidance.title
        runs = (("without " + short, "ae", watch_only), ("with " + short, guidance.name, used))
        traces = []
        for k, (name, run_method, cfg) in enumerate(runs):

            def report_step(step: int, name: str = name, k: int = k) -> None:
                if progress is not None:
                    progress((k * n_run + step + 1) / (2 * n_run), f"{name}: step {step + 1}/{n_run}")

            trace = self.sample_trace(prompt, spec, settings, run_method, cfg, latent_shape, groups[0], report_step)
            traces.append(trace)
        table = dict(report[prompt]["tokens"])
        items = [s.strip() for s in spec.split(",") if s.strip()]
        labels = [item if not item.lstrip("-").isdigit() else f"{table[g[0]].removesuffix('</w>')} ({item})"
                  for item, g in zip(items, groups[0])]  # fmt: skip
        command = self.command(prompt, spec, settings, preset, ae_flags, guidance.name)
        return RunResult(prompt, spec, labels, traces[0], traces[1], used, command, report, guidance.name)

    def sample_trace(
        self,
        prompt: str,
        spec: str,
        settings: Settings,
        method: str,
        config: Any,
        latent_shape: tuple[int, int, int],
        groups: tuple,
        on_step: Callable[[int], None],
    ) -> RunTrace:
        """One run from ``settings.seed`` with ``method`` (settings ``config``, schedule already scaled; "ae" with a
        watch-only config: without guidance) on ``groups``: its image, each step's maps and losses, its cost."""
        device = next(self.model.parameters()).device
        steps: list[StepMaps] = []

        def keep(maps: StepMaps) -> None:
            steps.append(maps)
            on_step(maps.step)

        sampler = inference.make_sampler(self.model, settings.sampler)
        generator = torch.Generator(device=device).manual_seed(settings.seed)
        count, t0 = [0], time.perf_counter()
        hook = self.model.model.diffusion_model.register_forward_pre_hook(
            lambda module, args: count.__setitem__(0, count[0] + int(args[0].shape[0]))
        )
        with inference.sampling_scope(self.model), contextlib.ExitStack() as stack:
            stack.callback(hook.remove)
            out = inference.sample_prompts(
                self.model, sampler, [prompt], latent_shape, settings.steps, settings.scale, eta=settings.eta,
                generator=generator, ae_tokens=spec, guidance=method, guidance_config=config, on_maps=keep,
            )  # fmt: skip
            t = torch.ones(1, dtype=torch.long, device=device)
            cond = out.cond.float() if isinstance(out.cond, torch.Tensor) else out.cond  # SDXL: a dict
            final = capture_token_maps(self.model, out.latents.float(), t, cond, [groups], display_config(config))[0]
        records = out.guidance.records if out.guidance is not None else []
        per_step = {r["step"]: sum(g.get("refinement", {}).get("iterations", 0) for g in r["groups"])
                    for r in records}  # fmt: skip
        losses = {r["step"]: r["groups"][0]["loss"] for r in records if r["groups"] and "loss" in r["groups"][0]}
        return RunTrace(
            image=inference.to_pil(out.images[0]),
            maps=[s.maps[0] for s in steps],
            final_maps=final,
            timesteps=[s.t for s in steps],
            guided=[s.guided for s in steps],
            refinement=[per_step.get(s.step, 0) for s in steps],
            method_loss=[losses.get(s.step) for s in steps],
            seconds=time.perf_counter() - t0,
            unet_evaluations=count[0],
        )

    def command(
        self, prompt: str, spec: str, settings: Settings, preset: str, ae_flags: Sequence[str], method: str = "ae"
    ) -> str:
        """The txt2img command that makes the guided run (and its maps with ``--save_attention``)."""
        args = [self.script, "--config", repo_relative(self.config_path), "--ckpt", repo_relative(self.ckpt_path)]
        if self.embedding_path:
            args += ["--embedding_path", repo_relative(self.embedding_path)]
        args += ["--prompt", prompt, "--ddim_steps", str(settings.steps), "--scale", str(settings.scale),
                 "--seed", str(settings.seed), "--H", str(settings.H), "--W", str(settings.W),
                 "--n_samples", "1", "--n_iter", "1"]  # fmt: skip
        if settings.sampler != "ddim":
            args += ["--sampler", settings.sampler]
        if settings.eta:
            args += ["--ddim_eta", str(settings.eta)]
        if self.script.endswith("stable_txt2img.py"):
            args += ["--precision", "full", "--f", str(self.factor)]
        if method == "ae":
            args += ["--ae_tokens", spec, "--ae_config", repo_relative(self.presets[preset]), *ae_flags]
        else:
            toy_file = self.description.method_settings(method)
            args += ["--guidance", method, *(["--guidance_config", repo_relative(toy_file)] if toy_file else []),
                     "--ae_tokens", spec, *ae_flags]  # fmt: skip
        return "python " + shlex.join([*args, "--save_attention"])


def repo_relative(path: str | Path) -> str:
    """A path inside the repository relative to it (the scripts run from there), others as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)
