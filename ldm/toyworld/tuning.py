"""Choosing a guidance method's ToyWorld settings on TUNING seeds (scripts/toyworld_tuning.py).

Plain sampling against a method's official settings and one- or two-knob changes of them, on two-subject prompts
"a {colour} {shape} and a {colour} {shape}" (prompt seed 200, noise 60000+: disjoint from scripts/evaluate_toyworld.py's
evaluation seeds), each method exciting the shape words as ``evaluate_toyworld.py --methods`` runs it. A variant is a
name from :data:`VARIANTS` (``"name@8"`` runs it with 8x8 maps) or ``name=field:value;field:value`` (YAML values),
applied to the method's official preset at the toy's main map side (and its settings file's ``attribute_res``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ldm.errors import UserError

__all__ = ["VARIANTS", "Variant", "parse_variants", "tune"]

# method -> variant name -> settings changed from the method's official preset (configs/guidance/<preset>.yaml)
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "ae": {
        "official": {},
        "no iterative refinement": {"max_refinement_steps": 0},
        "step size 5": {"scale_factor": 5.0},
        "softmax_scale 10": {"softmax_scale": 10.0},
        "update until step 10 of 50 only": {"max_iter_to_alter": 10, "thresholds": {0: 0.05}},
    },
    "syngen": {
        "official": {},
        "step 5": {"scale_factor": 5.0},
        "step 80": {"scale_factor": 80.0},
        "all steps": {"max_iter_to_alter": 50},
        "entities": {"include_entities": True},
    },
    "divide_bind": {
        "official": {},
        "colours bound": {"pairs_from_prompt": True},
        "no iterative refinement": {"max_refinement_steps": 0, "max_refinement_steps_init_step": 0},
        "step size 5": {"scale_factor": 5.0},
        "softmax_scale 10": {"softmax_scale": 10.0},
    },
    "conform": {
        "official": {},
        "step size 5": {"scale_factor": 5.0},
        "temperature 0.2": {"temperature": 0.2},
        "softmax over tokens x10": {"softmax_normalize": True, "softmax_scale": 10.0},
        "no memory": {"add_previous_attention_maps": False},
        "no iterative refinement": {"max_refinement_steps": 0},
    },
    "initno": {
        "official": {},
        "noise only": {"max_iter_to_alter": 0},
        "sampling only": {"noise_rounds": 0},
        "softmax 10": {"softmax_scale": 10.0},
        "step 5": {"scale_factor": 5.0},
    },
}
PRESET_FILES = {"ae": "attend_and_excite"}  # method -> its file in configs/guidance/ (else the method's name)
METRICS = {"present": "all subjects (shapes)", "colours": "all subjects, right colours", "missing": "missing a subject",
           "not drawn": "fewer objects than subjects"}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    name: str
    changes: dict[str, Any]


def parse_variants(method: str, spec: str, default_side: int) -> list[Variant]:
    """``"official,step 5@8,mine=scale_factor:40;temperature:0.2"`` -> variants (the side: ``attention_res``)."""
    known = VARIANTS.get(method, {"official": {}})
    variants = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if "=" in item:
            name, _, fields = item.partition("=")
            try:
                changes = {k.strip(): yaml.safe_load(v) for k, v in (f.split(":", 1) for f in fields.split(";") if f)}
            except ValueError as err:
                raise UserError(f"--variants {item!r}: expected NAME=FIELD:VALUE;FIELD:VALUE") from err
        else:
            name, _, side = item.partition("@")
            if name not in known:
                raise UserError(f"--variants: unknown variant {name!r} of {method}; known: {', '.join(known)}, or "
                                "NAME=FIELD:VALUE;FIELD:VALUE")  # fmt: skip
            changes = {**known[name], **({"attention_res": int(side)} if side else {})}
        variants.append(Variant(item, {"attention_res": default_side, **changes}))
    return variants


def tune(toy: str, method: str, variants: Sequence[Variant], n: int, prompt_seed: int, noise_seed: int,
         outdir: Path) -> None:  # fmt: skip
    """Print one line per variant (plain first): the rates with 95% Wilson intervals, the all-present and
    right-colours differences to plain (95% paired bootstrap), seconds and UNet evaluations per image."""
    from ldm.ae_flags import load_ae_config
    from ldm.guidance import get_method
    from ldm.guidance.flags import load_guidance_yaml, method_config
    from ldm.outputs import safe_stem
    from ldm.toyworld.benchmarks import TOYS, run_pairs, subject_metrics
    from ldm.toyworld.methods import count_unet_evaluations, toy_methods
    from ldm.toyworld.prompts import subject_prompts
    from ldm.toyworld.sampling import ROOT, SampleSettings, load_toyworld_model
    from ldm.toyworld.stats import bootstrap_diff, wilson

    guidance = get_method(method)
    preset = ROOT / "configs" / "guidance" / f"{PRESET_FILES.get(method, method)}.yaml"
    official = load_ae_config(preset) if method == "ae" else load_guidance_yaml(preset, "preset")[1]
    toy_settings = toy_methods(toy, [method])[0].config  # the map sides the toy needs (e.g. attribute_res)
    sides = {k: getattr(toy_settings, k) for k in ("attention_res", "attribute_res") if hasattr(toy_settings, k)}
    official = method_config(guidance, sides, "the toy's map sides", base=official)
    configs = [method_config(guidance, v.changes, f"variant {v.name!r}", base=official) for v in variants]
    model = load_toyworld_model(TOYS[toy].config, TOYS[toy].ckpt)
    prompts, specs = subject_prompts(n, 2, prompt_seed)
    seeds = [noise_seed + i for i in range(n)]
    plain = None
    for name, config in [("plain", None), *((v.name, c) for v, c in zip(variants, configs))]:
        with count_unet_evaluations(model.model.diffusion_model) as evaluations:
            verdicts, seconds = run_pairs(model, prompts, specs, seeds, SampleSettings(), config, outdir,
                                          safe_stem(f"toy{toy} {method} {name}"), method)  # fmt: skip
        metrics = subject_metrics(verdicts)
        plain = plain or metrics
        parts = []
        for label, key in METRICS.items():
            k = int(metrics[key].sum())
            lo, hi = wilson(k, n)
            part = f"{label} {k / n:.2f} [{lo:.2f}, {hi:.2f}]"
            if config is not None and label in ("present", "colours"):
                mean, dlo, dhi = bootstrap_diff(plain[key], metrics[key])
                part += f" ({mean:+.3f} [{dlo:+.3f}, {dhi:+.3f}])"
            parts.append(part)
        line = (
            f"{name:32s} "
            + "  ".join(parts)
            + f"  {seconds / n:.2f} s/image  {evaluations[0] / n:.0f} UNet evals/image"
        )
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
