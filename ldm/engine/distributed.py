"""Processes for the sampling engine, through Lightning Fabric (``lightning_fabric``, shipped with pytorch-lightning).

``--accelerator/--devices/--num_nodes/--strategy`` go to ``lightning_fabric.Fabric``; ``launch`` starts one process
per device the way Lightning does for scripts (the ``ddp`` strategy re-runs the script with ``LOCAL_RANK`` set; gloo
on the CPU, NCCL on GPUs; several machines: start the script on each with ``MASTER_ADDR``, ``MASTER_PORT``,
``NODE_RANK`` set, as for any Lightning script). Fabric only places processes and devices here: sampling needs no
gradient synchronisation, so the model is not wrapped in DDP.

Progress and the end of the run are coordinated through small files in the output folder (``.engine/rank-N.json``,
written atomically), not through collectives: ranks finish at different times, and a rank that waited in a collective
for longer than the process-group timeout would fail. The output folder must be shared by all processes (one file
system for all machines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldm.outputs import save_json

logger = logging.getLogger(__name__)

__all__ = ["DistributedOptions", "add_distributed_args", "distributed_options", "launch", "ProgressBoard"]

SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "xla")


@dataclass(frozen=True)
class DistributedOptions:
    accelerator: str = "auto"
    devices: str = "1"
    num_nodes: int = 1
    strategy: str = "auto"


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """``--accelerator --devices --num_nodes --strategy`` (Lightning's names; one process per device)."""
    g = parser.add_argument_group("processes (Lightning Fabric)")
    g.add_argument("--accelerator", default="auto", help="cpu | gpu | cuda | auto (default auto)")
    g.add_argument("--devices", default="1", help="devices per machine: a count, or a list like 0,1 (default 1)")
    g.add_argument("--num_nodes", type=int, default=1, help="machines (default 1)")
    g.add_argument("--strategy", default="auto", help="auto | ddp (default auto: ddp for several devices)")


def _devices(value: str) -> int | list[int] | str:
    value = str(value).strip()
    if value == "auto" or value == "-1":
        return value if value == "auto" else -1
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--devices {value!r}: give a count (2), a list (0,1) or auto") from None


def distributed_options(args: argparse.Namespace) -> DistributedOptions:
    """The options from parsed flags; an explicit ``--device cuda:1`` (the scripts' older flag) picks that device."""
    accelerator, devices = args.accelerator, str(args.devices)
    device = getattr(args, "device", None)
    if device and accelerator == "auto" and devices == "1":
        dev = torch.device(device)
        accelerator = "cuda" if dev.type == "cuda" else dev.type
        devices = f"{dev.index}," if dev.index is not None else "1"
    if args.num_nodes < 1:
        raise ValueError(f"--num_nodes {args.num_nodes}: must be at least 1")
    return DistributedOptions(accelerator, devices, args.num_nodes, args.strategy)


def launch(options: DistributedOptions) -> Any:
    """A launched ``lightning_fabric.Fabric``: in the ``ddp`` case this process is one of ``world_size`` ranks."""
    from lightning_fabric import Fabric

    if options.strategy in SPAWN_STRATEGIES:
        raise ValueError(
            f"--strategy {options.strategy}: the sampling scripts run one copy of themselves per device; use ddp"
        )
    fabric = Fabric(
        accelerator=options.accelerator, devices=_devices(options.devices), num_nodes=options.num_nodes,
        strategy=options.strategy, precision="32-true",
    )  # fmt: skip
    fabric.launch()
    if fabric.world_size > 1:
        logger.info("rank %d of %d on %s", fabric.global_rank, fabric.world_size, fabric.device)
    return fabric


class ProgressBoard:
    """Each rank's count of finished items in ``<folder>/rank-<r>.json``; rank 0 reads them all for its bar.

    ``finish()`` marks the rank done (``failed`` when it stopped on an error) and, with several ranks, waits until
    every rank is done, polling the files; then the ranks meet in a barrier. A rank that failed makes the others stop
    with an error naming it.
    """

    def __init__(self, folder: str | Path, rank: int, world_size: int, poll_s: float = 0.5) -> None:
        self.folder = Path(folder)
        self.rank = rank
        self.world_size = world_size
        self.poll_s = poll_s
        self.done = 0

    def _path(self, rank: int) -> Path:
        return self.folder / f"rank-{rank}.json"

    def report(self, done: int, state: str = "running") -> None:
        self.done = done
        if self.world_size > 1:
            save_json({"done": done, "state": state, "pid": os.getpid()}, self._path(self.rank), self.folder)

    def reset(self) -> None:
        """Before a run (after the ranks agreed on the work): this rank starts at 0."""
        self.report(0)

    def states(self) -> list[dict]:
        """Every rank's last report (``done`` 0 and ``starting`` for a rank that has not written yet)."""
        out = []
        for r in range(self.world_size):
            if r == self.rank:
                out.append({"done": self.done, "state": "running"})
                continue
            try:
                out.append(json.loads(self._path(r).read_text()))
            except (OSError, ValueError):
                out.append({"done": 0, "state": "starting"})
        return out

    def total_done(self) -> int:
        return sum(int(s.get("done", 0)) for s in self.states()) if self.world_size > 1 else self.done

    def wait_all(self, on_poll: Any = None) -> None:
        """Block until every other rank reports ``finished`` (``on_poll()`` is called between polls)."""
        if self.world_size == 1:
            return
        while True:
            others = {r: s for r, s in enumerate(self.states()) if r != self.rank}
            failed = [r for r, s in others.items() if s.get("state") == "failed"]
            if failed:
                raise RuntimeError(f"sampling failed on rank(s) {failed}; see their logs (the finished images stay)")
            if all(s.get("state") == "finished" for s in others.values()):
                return
            if on_poll is not None:
                on_poll()
            time.sleep(self.poll_s)
