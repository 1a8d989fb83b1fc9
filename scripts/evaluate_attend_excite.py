#!/usr/bin/env python
"""Attend-and-Excite's CLIP scores (reference-spec 2.8) over a prompt set.

For every prompt: full-prompt similarity (mean over images of the cosine with the prompt's text embedding averaged
over the 80 ImageNet templates) and minimum-object similarity (mean over images of the minimum over the prompt's
halves, split at " and ", else " with "; prompts with neither are skipped like in the reference).

Images come either from folders, one per prompt:

    <images_dir>/<prompt>/<*.png|*.jpg>        e.g.  outputs/sd/a cat and a dog/0000.png

    python scripts/evaluate_attend_excite.py --images_dir outputs/sd outputs/ae \\
        --clip_model /models/clip-vit-base-patch16

or are generated first, without and with A&E, into ``<out_dir>/images/{without_ae,with_ae}/<prompt>/``:

    python scripts/evaluate_attend_excite.py --generate --ckpt_path model.ckpt --config <config.yaml> \\
        --clip_model /models/clip-vit-base-patch16 --n_samples 64 --out_dir outputs/ae_eval

A&E excites the last word of each half of the prompt (``--ae_tokens`` overrides that for every prompt); every A&E
knob has an ``--ae_<field>`` flag (as in scripts/txt2img.py) and the schedule is scaled to the DDIM steps run.
``--guidance NAME`` (with its ``--g_<field>`` flags) compares another registered guidance method with plain sampling
instead; its images go to ``images/with_<NAME>/``. Each generated folder gets a ``settings.json`` of what was used
and what the guidance did.

Writes ``clip_raw_metrics.json`` (per prompt and image), ``clip_aggregated_metrics.json`` (per category) and
``clip_metrics.md`` (the table, also printed) to ``--out_dir``. A rerun never replaces them (nor a folder's
``settings.json`` that differs): its records are numbered, ``clip_raw_metrics-0001.json`` and so on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ldm import engine, inference  # noqa: E402
from ldm.evaluation import metrics  # noqa: E402
from ldm.evaluation.clip import CLIPFeatureExtractor, resolve_clip_folder  # noqa: E402
from ldm.evaluation.evaluators import (  # noqa: E402
    aggregate,
    collect_prompt_images,
    evaluate_prompt_set,
    markdown_table,
    read_prompt_file,
)
from ldm.evaluation.generate import add_size_args, guidance_summary, latent_shape, read_guidance_records  # noqa: E402
from ldm.outputs import ensure_folder, json_text, record_number, save_record, text_writer  # noqa: E402
from ldm.precision import PRECISIONS  # noqa: E402
from ldm.sampler_flags import add_sampler_args, sampler_from_flags  # noqa: E402

logger = logging.getLogger("evaluate_attend_excite")
DEFAULT_CONFIG = "configs/latent-diffusion/txt2img-1p4B-eval_with_tokens.yaml"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", default=str(metrics.PROMPTS_FILE), help="prompt file (category<TAB>prompt lines)")
    p.add_argument("--images_dir", nargs="+", help="one or more folders laid out as <dir>/<prompt>/<images>")
    p.add_argument("--labels", nargs="+", help="names of the --images_dir entries in the table (default: folder names)")
    p.add_argument("--generate", action="store_true", help="generate the images without and with A&E first")
    p.add_argument("--clip_model", required=True, help="local Hugging Face CLIP folder (the paper used ViT-B/16)")
    p.add_argument("--templates", default=str(metrics.TEMPLATES_FILE), help="prompt templates, one per line with {}")
    p.add_argument("--out_dir", default="outputs/attend_excite_eval", help="where results (and images) go")
    p.add_argument("--categories", nargs="+", help="evaluate only these categories")
    p.add_argument("--max_prompts", type=int, default=0, help="evaluate only the first N prompts (0: all)")
    p.add_argument("--skip_missing", action="store_true", help="skip prompts without an image folder")
    p.add_argument("--batch_size", type=int, default=8, help="sampling and CLIP batch size (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g = p.add_argument_group("generation (--generate)")
    g.add_argument("--ckpt_path", help="diffusion model checkpoint")
    g.add_argument("--config", default=DEFAULT_CONFIG, help=f"model config (default {DEFAULT_CONFIG})")
    g.add_argument("--embedding_path", help="optional textual-inversion embeddings")
    g.add_argument("--n_samples", type=int, default=64, help="images per prompt and method (default 64)")
    g.add_argument("--ddim_steps", type=int, default=50, help="sampling steps (default 50)")
    add_sampler_args(g)
    g.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5, as A&E)")
    g.add_argument("--seed", type=int, default=0, help="base seed; image i of a prompt has its own seed from "
                   "(seed, prompt, i), the same for both methods")  # fmt: skip
    g.add_argument("--precision", choices=PRECISIONS, default="full",
                   help="full | autocast (CUDA fp16, CPU bf16) | fp16 | bf16 (half-precision weights)")  # fmt: skip
    add_size_args(g)
    engine.add_distributed_args(p)
    tokens_help = "words/positions to excite in every prompt (default: the last word of each half of the prompt)"
    inference.add_attend_excite_args(p, tokens_help=tokens_help, save_attention=False)
    inference.add_guidance_args(p)
    return p


def select_prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    prompts = read_prompt_file(args.prompts)
    if args.categories:
        known = {c for c, _ in prompts}
        unknown = set(args.categories) - known
        if unknown:
            raise ValueError(f"--categories {sorted(unknown)} not in {args.prompts} (it has {sorted(known)})")
        prompts = [(c, p) for c, p in prompts if c in args.categories]
    if args.max_prompts > 0:
        prompts = prompts[: args.max_prompts]
    return prompts


def object_words(prompt: str) -> list[str]:
    """The noun of each part ("a cat with a crown" -> ["cat", "crown"]): the last word of each part."""
    parts = metrics.split_prompt(prompt)
    if parts is None:
        raise ValueError(f"cannot find the objects of {prompt!r} (no ' and '/' with ')")
    return [part.split()[-1] for part in parts]


def ae_spec(args: argparse.Namespace, prompt: str) -> str:
    """What A&E excites in ``prompt``: ``--ae_tokens``, or its object words (``"cat,crown"``)."""
    return args.ae_tokens.strip() or ",".join(object_words(prompt))


def check_tokens(model: torch.nn.Module, args: argparse.Namespace, prompts: list[tuple[str, str]]) -> None:
    """Resolve every prompt's A&E tokens before the slow part (a word not in a prompt is an error)."""
    for _, prompt in prompts:
        (groups,), _, _ = inference.resolve_batch_tokens(model, [prompt], ae_spec(args, prompt))
        if len(set(groups)) < len(groups):
            logger.warning("A&E on %r excites positions %s: a word occurs twice (its first occurrence is used; "
                           "give positions with --ae_tokens to pick another)", prompt, list(groups))  # fmt: skip


LABELS = {"plain": "without_ae", "ae": "with_ae"}  # method -> image folder under <out_dir>/images (others: with_<name>)


def labels_for(method: str) -> dict[str, str]:
    """The two methods compared and their image folders: plain and ``method``."""
    return {"plain": LABELS["plain"], method: LABELS.get(method, f"with_{method}")}


def generate_all(args: argparse.Namespace, prompts: list[tuple[str, str]]) -> tuple[dict[str, Path], dict] | None:
    """Generate every prompt's images without and with A&E on the engine (one process per device, resumable:
    images that exist are kept). Returns, on rank 0, the image roots and the generation settings (also written to
    each prompt folder's ``settings.json``); None on the other ranks.
    """
    if not args.ckpt_path:
        raise ValueError("--generate needs --ckpt_path (and --config)")
    if not args.ae_tokens.strip():
        for _, prompt in prompts:
            object_words(prompt)  # fail early on prompts A&E cannot use
    args.guidance = args.guidance or "ae"
    if args.guidance == "plain":
        raise ValueError("--guidance plain: the evaluation compares plain sampling with a guidance method; pick one")
    inference.check_sampling_flags(args, ckpt_flag="--ckpt_path", ae=args.guidance == "ae")  # before loading
    spec = args.ae_tokens
    args.ae_tokens = args.ae_tokens or "per prompt"  # the method's token check; the words come from each prompt
    choice = inference.guidance_choice(args)
    args.ae_tokens = spec
    labels = labels_for(choice.name)
    sampler = sampler_from_flags(args)
    texts = [p for _, p in prompts]
    root = ensure_folder(Path(args.out_dir) / "images", "--out_dir")  # a file in the way: one error line
    items = engine.make_items(
        root, texts, args.n_samples, list(labels), args.seed,
        path_of=lambda p, i, m: Path(labels[m]) / p / f"{i:04}.png",  # the folder is named exactly like the prompt
        ae_tokens_of=lambda p: ae_spec(args, p),
        record_of=lambda p, i, m: Path(labels[m]) / p / "guidance" / f"{i:04}.json",
    )  # fmt: skip
    fabric = engine.launch(engine.distributed_options(args))
    model = engine.load_model_for(fabric.device, args.config, args.ckpt_path, args.embedding_path, args.precision,
                           "--ckpt_path")  # fmt: skip
    check_tokens(model, args, prompts)
    shape = latent_shape(model, inference.first_stage_factor(args.config), args.H, args.W)
    used, n_run = inference.schedule_for_run(choice.config, sampler, args.ddim_steps, model.num_timesteps,
                                             log=fabric.global_rank == 0, method=choice.method)  # fmt: skip
    settings = {
        "ckpt_path": args.ckpt_path, "config": args.config, "embedding_path": args.embedding_path,
        "n_samples": args.n_samples, "sampler": sampler, "ddim_steps": args.ddim_steps, "scale": args.scale,
        "seed": args.seed,
        "precision": args.precision, "latent_shape": list(shape),
    }  # fmt: skip
    used_record = dataclasses.asdict(used) | {"steps_run": n_run}
    if choice.name == "ae":
        settings["attend_and_excite"] = used_record
    else:
        settings["guidance"] = {"method": choice.name, "settings": used_record}
    engine_settings = engine.EngineSettings(
        latent_shape=shape, sampler=sampler, steps=args.ddim_steps, scale=args.scale, batch_size=args.batch_size,
        precision=args.precision, ae_config=choice.config if choice.name == "ae" else None,
        guidance=None if choice.name == "ae" else {choice.name: choice.config},
    )  # fmt: skip
    record = {k: settings[k] for k in ("ckpt_path", "config", "embedding_path", "seed")}
    result = engine.run_items(fabric, model, items, engine_settings, root, record, args.rank_timeout)
    if not result.is_rank_zero:
        return None
    for _, prompt in prompts:
        for method, label in labels.items():
            guided = None
            if method != "plain":  # the settings used, the tokens (table, excited positions), what the guidance did
                spec = ae_spec(args, prompt)
                _, _, report = inference.resolve_batch_tokens(model, [prompt], spec)
                mine = [it for it in items if it.prompt == prompt and it.method == method]
                records = read_guidance_records([it.record_path for it in mine])
                done = {"ae_tokens": spec, **report[prompt], "guidance": guidance_summary(records)}
                guided = used_record | done
            key = "attend_and_excite" if method in ("plain", "ae") else "guidance"
            folder_record = {"prompt": prompt, "method": label, **settings, key: guided}
            save_record(text_writer(json_text(folder_record)), root / label / prompt / "settings.json", root,
                        keep_same=True)  # fmt: skip
    del model
    if fabric.device.type == "cuda":
        torch.cuda.empty_cache()
    return {label: root / label for label in labels.values()}, settings


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = inference.pick_device(args.device)
    if bool(args.images_dir) == bool(args.generate):
        raise ValueError("pass either --images_dir DIR [DIR ...] or --generate")
    clip_folder = resolve_clip_folder(args.clip_model)
    templates = metrics.load_templates(args.templates)
    prompts = select_prompts(args)
    prompt_texts = [p for _, p in prompts]

    generation = None
    if args.generate:
        generated = generate_all(args, prompts)
        if generated is None:  # a rank other than 0 of a multi-process run: rank 0 scores
            return {}
        dirs, generation = generated
    else:
        labels = args.labels or [Path(d).name for d in args.images_dir]
        if len(labels) != len(args.images_dir) or len(set(labels)) != len(labels):
            raise ValueError(f"--labels {labels}: need one distinct label per --images_dir entry")
        dirs = dict(zip(labels, (Path(d) for d in args.images_dir), strict=True))
    # Check every folder before the slow part.
    images = {label: collect_prompt_images(d, prompt_texts, args.skip_missing) for label, d in dirs.items()}

    extractor = CLIPFeatureExtractor.from_pretrained(clip_folder, device=device, batch_size=args.batch_size)
    raw: dict[str, dict] = {}
    aggregated: dict[str, dict] = {}
    for label, found in images.items():
        results, skipped = evaluate_prompt_set(extractor, prompts, found, templates)
        raw[label] = {"images_dir": str(dirs[label]), "prompts": results, "skipped": skipped}
        aggregated[label] = aggregate(results)

    table = markdown_table(aggregated)
    out_dir = ensure_folder(args.out_dir, "--out_dir")
    meta = {"clip_model": str(clip_folder), "templates": args.templates, "prompts": args.prompts}
    if generation is not None:
        meta["generation"] = generation
    raw_file = save_record(text_writer(json.dumps({**meta, "methods": raw}, indent=2) + "\n"),
                           out_dir / "clip_raw_metrics.json")  # fmt: skip
    number = record_number(raw_file, out_dir / "clip_raw_metrics.json")  # the other two get the same number
    aggregated_file = save_record(text_writer(json.dumps({**meta, "methods": aggregated}, indent=2) + "\n"),
                                  out_dir / "clip_aggregated_metrics.json", number=number)  # fmt: skip
    table_file = save_record(text_writer(table), out_dir / "clip_metrics.md", number=number)
    print(table)
    print(f"wrote {raw_file}, {aggregated_file.name} and {table_file.name}")
    return {"raw": raw, "aggregated": aggregated, "table": table}


if __name__ == "__main__":
    from ldm.cli import run_cli

    run_cli(main)
