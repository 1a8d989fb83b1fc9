"""The sampling engine: many images over many processes, each image with its own seed, resumable.

- ``items``: the work as ``(prompt, sample index, method)`` items, per-image seeds and file paths.
- ``distributed``: processes through Lightning Fabric (``--accelerator/--devices/--num_nodes/--strategy``) and the
  progress files the ranks coordinate through.
- ``runner``: each process's share, in batches, written atomically through ``ldm.outputs``.

Used by ``scripts/txt2img.py``/``scripts/stable_txt2img.py --from-file``, ``scripts/evaluate_attend_excite.py
--generate`` and ``scripts/evaluate_model.py``.
"""

from ldm.engine.distributed import (
    DistributedOptions,
    add_distributed_args,
    broadcast_plan,
    distributed_options,
    launch,
)
from ldm.engine.items import WorkItem, item_seed, make_items, prompt_stems
from ldm.engine.runner import EngineResult, EngineSettings, load_model_for, run_items, sample_items

__all__ = [
    "DistributedOptions", "add_distributed_args", "broadcast_plan", "distributed_options", "launch", "WorkItem",
    "item_seed", "make_items", "prompt_stems", "EngineResult", "EngineSettings", "load_model_for", "run_items",
    "sample_items",
]  # fmt: skip
