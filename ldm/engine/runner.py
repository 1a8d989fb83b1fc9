"""The sampling engine's run: the items of every process, in batches, each image written atomically on its own.

``run_items`` is what every process calls after :func:`ldm.engine.distributed.launch`:
1. rank 0 checks the output folder's record of the settings (``.engine/settings.json``): a folder holding images made
   with other settings is refused, so a resumed run never mixes them;
2. rank 0 lists the items whose image does not exist yet (resumption: the others are skipped) and broadcasts them;
   rank ``r`` of ``W`` takes every ``W``-th of them, starting at ``r``;
3. each process samples its items in batches of one method (plain, A&E or another guidance method), every image
   from its own generator
   (:func:`ldm.engine.items.item_generator`), and writes each image (and, for A&E, its record first) through
   ``ldm.outputs``; rank 0 shows one bar for the whole run (images done by all ranks / total, images per second);
4. the processes wait for each other; the caller's rank 0 then scores or summarises the folders. A rank whose process
   ends or goes silent stops the others with one error (``ldm.engine.distributed.ProgressBoard``: ``--rank_timeout``).

An image is written exclusively: if another run into the same folder made it meanwhile (same settings, so the same
pixels), that one stays and this run moves on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ldm import inference
from ldm.engine.distributed import RANK_TIMEOUT_S, ProgressBoard, broadcast_plan
from ldm.engine.items import WorkItem, item_generator, start_noise
from ldm.errors import RunError
from ldm.guidance import get_method
from ldm.guidance.attend_excite.config import AttendExciteConfig
from ldm.models.diffusion.sampler_base import select_cond
from ldm.outputs import save_image, save_json
from ldm.precision import cast_model

logger = logging.getLogger(__name__)

__all__ = ["EngineSettings", "EngineResult", "load_model_for", "sample_items", "run_items", "STATE_DIR"]

STATE_DIR = ".engine"  # inside the output root: the settings record and the ranks' progress files
# settings added after the first engine release, left out of the settings record at their defaults
NEW_SETTINGS = {"guidance": None, "size": None, "negative_prompt": "", "decode_precision": "auto"}


@dataclass(frozen=True)
class EngineSettings:
    """How every image of a run is sampled (all of it but ``batch_size`` decides the pixels)."""

    latent_shape: tuple[int, int, int]  # (C, H/f, W/f)
    sampler: str = "ddim"
    steps: int = 50
    scale: float = 7.5
    eta: float = 0.0
    batch_size: int = 1
    precision: str = "full"
    ae_config: AttendExciteConfig | None = None  # the schedule as written (scaled to the steps run here)
    guidance: Mapping[str, Any] | None = None  # other methods' settings by method name (as written)
    size: Any = None  # SDXL's SizeConditioning
    negative_prompt: str = ""
    decode_precision: str = "auto"

    def method_config(self, method: str) -> Any:
        """The settings (as written) the items of ``method`` are sampled with; None for plain sampling."""
        if method == "plain":
            return None
        if method == "ae":
            return self.ae_config or AttendExciteConfig()
        configured = (self.guidance or {}).get(method)
        return configured if configured is not None else get_method(method).config_class()

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.steps < 1:
            raise ValueError(f"batch size ({self.batch_size}) and steps ({self.steps}) must be positive")


@dataclass
class EngineResult:
    is_rank_zero: bool
    total: int  # items of the run
    skipped: int  # items whose image existed already
    made: int  # images made by this process


def load_model_for(
    device: torch.device,
    config: str,
    ckpt: str,
    embedding_path: str | None,
    precision: str,
    ckpt_flag: str = "--ckpt",
    compile_unet: bool = False,
) -> torch.nn.Module:
    """:func:`ldm.inference.load_model` on ``device``, the frozen networks cast for ``precision`` (fp16/bf16), the
    UNet compiled with ``torch.compile`` when ``compile_unet`` (``--compile``)."""
    from ldm.modules.diffusionmodules.util import compile_diffusion_model

    model = cast_model(inference.load_model(config, ckpt, embedding_path, device, ckpt_flag=ckpt_flag), precision)
    if compile_unet:
        compile_diffusion_model(model.model.diffusion_model)
    return model


def _per_sample_records(records: list[dict], sample: int) -> list[dict]:
    """The guidance records (e.g. ``AttendAndExcite.records``) of one sample of the batch, without batch positions."""
    out = []
    for rec in records:
        groups = [{k: v for k, v in g.items() if k != "samples"} for g in rec["groups"] if sample in g["samples"]]
        if groups:
            out.append({"step": rec["step"], "t": rec["t"], "groups": groups})
    return out


def sample_items(
    model: torch.nn.Module, sampler: Any, items: Sequence[WorkItem], settings: EngineSettings, used: Any,
) -> inference.SampledBatch:  # fmt: skip
    """One batch of items of one method (``used``: its settings, schedule absolute), each from its own generator
    (start noise, then step noise).

    A batch of fewer than ``settings.batch_size`` items is filled up with copies of its last item, whose outputs are
    dropped: every model call has ``batch_size`` samples, so an image does not depend on whether its batch was full
    (kernels may take other code paths for other batch sizes; see docs/distributed.md).
    """
    methods = {it.method for it in items}
    if len(methods) != 1:
        raise ValueError(f"a batch mixes methods {sorted(methods)}")
    n = len(items)
    items = list(items) + [items[-1]] * max(0, settings.batch_size - n)
    device = next(model.parameters()).device
    generators = [item_generator(it.seed) for it in items]
    x_T = torch.stack([start_noise(g, settings.latent_shape) for g in generators]).to(device)  # [b, C, h, w]
    method = items[0].method
    specs = [it.ae_tokens if it.method != "plain" else "" for it in items]
    out = inference.sample_prompts(
        model, sampler, [it.prompt for it in items], settings.latent_shape, settings.steps, settings.scale,
        eta=settings.eta, generator=generators, x_T=x_T, ae_tokens=specs, log_tokens=False, guidance=method,
        guidance_config=used, size=settings.size, negative_prompt=settings.negative_prompt,
        decode_precision=settings.decode_precision,
    )  # fmt: skip
    if len(items) == n:
        return out
    if out.guidance is not None:  # the fillers' records go too
        for rec in out.guidance.records:
            rec["groups"] = [g for g in rec["groups"] if min(g["samples"]) < n]
    groups = out.token_groups[:n] if out.token_groups is not None else None
    cond = select_cond(out.cond, slice(0, n))
    return inference.SampledBatch(out.images[:n], out.latents[:n], cond, out.guidance, groups, out.report)


def _check_settings(root: Path, record: dict) -> None:
    """Refuse a folder whose images were made with other settings; record ours in a new one."""
    path = root / STATE_DIR / "settings.json"
    record = json_roundtrip(record)
    if not path.is_file():
        try:
            save_json(record, path, root, exclusive=True)  # of two runs starting at once, one records its settings
            return
        except FileExistsError:
            pass  # the other run's: compared below
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    if changed:
        raise ValueError(
            f"{root} holds images made with other settings ({', '.join(changed)} differ; see {path}); "
            "use another output folder, or delete it to start again"
        )


def json_roundtrip(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists, other values strings)."""
    return json.loads(json.dumps(data, default=str))


def _batches(items: list[WorkItem], size: int) -> list[list[WorkItem]]:
    """Consecutive batches of at most ``size`` items of one method (plain first, then the others in item order)."""
    out = []
    methods = sorted(dict.fromkeys(it.method for it in items), key=lambda m: m != "plain")
    for method in methods:
        group = [it for it in items if it.method == method]
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def run_items(
    fabric: Any,
    model: torch.nn.Module,
    items: Sequence[WorkItem],
    settings: EngineSettings,
    root: str | Path,
    run_record: dict | None = None,
    rank_timeout: float = RANK_TIMEOUT_S,
) -> EngineResult:
    """Make this process's share of the images of ``items`` that do not exist yet; see the module docstring.

    ``root`` is the output folder every item path lies in; ``run_record`` (model, checkpoint, prompts' source ...)
    joins the settings in ``.engine/settings.json``; ``rank_timeout`` (``--rank_timeout``): how long another rank may
    stay silent. Returns on every rank once all ranks are done.
    """
    root = Path(root)
    rank, world = int(fabric.global_rank), int(fabric.world_size)
    board = ProgressBoard(root / STATE_DIR, rank, world, timeout_s=rank_timeout)
    try:
        return _run_board(fabric, model, items, settings, root, run_record, board)
    finally:
        board.stop()


def _run_board(
    fabric: Any, model: torch.nn.Module, items: Sequence[WorkItem], settings: EngineSettings, root: Path,
    run_record: dict | None, board: ProgressBoard,
) -> EngineResult:  # fmt: skip
    rank, world = board.rank, board.world_size
    plan: list[int] | str | None = None  # rank 0: the pending item numbers, or the error that stops every rank
    error: Exception | None = None
    if rank == 0:
        record = {k: v for k, v in dataclasses.asdict(settings).items() if k != "batch_size"}
        for key, default in NEW_SETTINGS.items():  # runs that do not use them keep the record they always had
            if record.get(key) == default:
                record.pop(key, None)
        try:
            _check_settings(root, record | (run_record or {}))
            plan = [i for i, it in enumerate(items) if not it.path.is_file()]
        except (ValueError, OSError) as err:
            error, plan = err, str(err)
    board.reset()  # before the broadcast: every rank's stale file from an earlier run is gone when it returns
    plan = broadcast_plan(fabric, plan)
    if error is not None:
        raise error
    if isinstance(plan, str):
        raise RunError(f"rank 0 stopped the run: {plan}")
    pending_ids = plan
    mine = [items[i] for i in pending_ids[rank::world]]
    skipped = len(items) - len(pending_ids)
    if rank == 0 and skipped:
        logger.info("%d of %d images exist already and are skipped", skipped, len(items))
    bar = tqdm(total=len(pending_ids), desc="images (all ranks)", unit="img", disable=rank != 0, smoothing=0.1)

    def refresh() -> None:
        if rank == 0:
            bar.update(board.total_done() - bar.n)

    def after_batch() -> None:
        refresh()
        board.check_peers()  # a rank whose process ended stops the others now, not after their whole share

    made = 0
    try:
        if mine:
            made = _sample_share(model, mine, settings, root, board, after_batch)
        board.report(made, "finished")
    except BaseException:
        board.report(made, "failed")
        raise
    logger.info("rank %d made %d images", rank, made)
    board.wait_all(on_poll=refresh)
    refresh()
    bar.close()
    if world > 1:
        fabric.barrier()
    return EngineResult(rank == 0, len(items), skipped, made)


def _sample_share(
    model: torch.nn.Module, mine: list[WorkItem], settings: EngineSettings, root: Path, board: ProgressBoard,
    refresh: Any,
) -> int:  # fmt: skip
    sampler = inference.make_sampler(model, settings.sampler)
    used: dict[str, Any] = {}  # method -> settings with the schedule made absolute
    for method in dict.fromkeys(it.method for it in mine):
        config = settings.method_config(method)
        if config is not None:
            used[method], _ = inference.schedule_for_run(
                config, settings.sampler, settings.steps, model.num_timesteps, log=board.rank == 0, method=method
            )
    made = 0
    with inference.sampling_scope(model, settings.precision):
        for batch in _batches(mine, settings.batch_size):
            out = sample_items(model, sampler, batch, settings, used.get(batch[0].method))
            for b, (item, image) in enumerate(zip(batch, out.images, strict=True)):
                if item.record_path is not None:
                    record = {
                        "prompt": item.prompt, "index": item.index, "seed": item.seed, "ae_tokens": item.ae_tokens,
                        "excited": [list(g) for g in (out.token_groups or [()] * len(batch))[b]],
                        "guidance": _per_sample_records(out.guidance.records if out.guidance else [], b),
                    }  # fmt: skip
                    save_json(record, item.record_path, root)
                try:  # last: the image marks the item done
                    save_image(inference.to_pil(image), item.path, root, exclusive=True)
                except FileExistsError:  # another run into this folder made it meanwhile (same settings, same pixels)
                    logger.info("%s was made by another run meanwhile; it stays", item.path)
            made += len(batch)
            board.report(made)
            refresh()
    return made
