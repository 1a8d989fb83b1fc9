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

Liveness: each rank's file carries its process id, host and a heartbeat counter that a thread advances every few
seconds. A rank checks the others after every batch and while it waits at the end; it stops with one
:class:`ldm.errors.RunError` when another rank's process is gone (same machine: its PID no longer runs) or its
heartbeat has not moved for ``--rank_timeout`` seconds (any machine; default 300). The images made so far stay; the
same command resumes. A rank never waits on another without a bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldm.errors import RunError
from ldm.outputs import save_json

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedOptions", "add_distributed_args", "distributed_options", "launch", "broadcast_plan", "ProgressBoard",
    "process_alive", "RANK_TIMEOUT_S",
]  # fmt: skip

SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "xla")
RANK_TIMEOUT_S = 300.0  # --rank_timeout: how long another rank may stay silent (no heartbeat) before this one stops
HEARTBEAT_S = 5.0  # how often a rank's heartbeat moves


@dataclass(frozen=True)
class DistributedOptions:
    accelerator: str = "auto"
    devices: str = "1"
    num_nodes: int = 1
    strategy: str = "auto"
    rank_timeout: float = RANK_TIMEOUT_S


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """``--accelerator --devices --num_nodes --strategy`` (Lightning's names; one process per device)."""
    g = parser.add_argument_group("processes (Lightning Fabric)")
    g.add_argument("--accelerator", default="auto", help="cpu | gpu | cuda | auto (default auto)")
    g.add_argument("--devices", default="1", help="devices per machine: a count, or a list like 0,1 (default 1)")
    g.add_argument("--num_nodes", type=int, default=1, help="machines (default 1)")
    g.add_argument("--strategy", default="auto", help="auto | ddp (default auto: ddp for several devices)")
    g.add_argument("--rank_timeout", type=float, default=RANK_TIMEOUT_S,
                   help="seconds another process may stay silent (no heartbeat) before this one stops with an error "
                   f"(default {RANK_TIMEOUT_S:g}); a process that has ended is noticed within a second")  # fmt: skip


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
    timeout = float(getattr(args, "rank_timeout", RANK_TIMEOUT_S))
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"--rank_timeout {timeout:g}: give a positive number of seconds (default {RANK_TIMEOUT_S:g})")
    return DistributedOptions(accelerator, devices, args.num_nodes, args.strategy, timeout)


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


def broadcast_plan(fabric: Any, plan: Any) -> Any:
    """``fabric.broadcast(plan, src=0)``; a peer lost in the collective (its process ended) is one :class:`RunError`."""
    if int(fabric.world_size) == 1:
        return plan
    try:
        return fabric.broadcast(plan, src=0)
    except RuntimeError as err:  # gloo: "Connection closed by peer" and the like
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"rank {fabric.global_rank}: another process of the run ended before the work was shared ({first}); "
            "nothing was sampled: run the command again"
        ) from err


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a process from ``/proc/<pid>/stat`` (Linux), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]  # state (R, S, Z ...), start time in clock ticks since boot


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` (on this machine) still runs: it exists, is not a zombie, and, when ``start`` is
    given and ``/proc`` is readable, it is the same process (not a later one that got the same PID)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and (start is None or start == started)


class ProgressBoard:
    """Each rank's count of finished items in ``<folder>/rank-<r>.json``; rank 0 reads them all for its bar.

    ``report(n, "finished")`` marks the rank done (``failed`` when it stopped on an error); ``wait_all`` then waits,
    with several ranks, until every rank is done, polling the files; then the ranks meet in a barrier. A rank that
    failed, whose process is gone, or whose heartbeat has not moved for ``timeout_s`` makes the others stop with a
    :class:`RunError` naming it.
    """

    def __init__(
        self, folder: str | Path, rank: int, world_size: int, poll_s: float = 0.5, timeout_s: float = RANK_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.rank = rank
        self.world_size = world_size
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.heartbeat_s = min(heartbeat_s, timeout_s / 4)
        self.done = 0
        self.state = "running"
        self._beat = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[int, tuple[Any, float]] = {}  # rank -> (its last heartbeat, when it last moved: monotonic)
        stat = _proc_stat(os.getpid())
        self._me = {"pid": os.getpid(), "host": socket.gethostname(), "start": stat[1] if stat else None}

    def _path(self, rank: int) -> Path:
        return self.folder / f"rank-{rank}.json"

    def _write(self) -> None:
        record = {"done": self.done, "state": self.state, "beat": self._beat, **self._me}
        save_json(record, self._path(self.rank), self.folder)

    def report(self, done: int, state: str = "running") -> None:
        self.done, self.state = done, state
        if self.world_size > 1:
            with self._lock:
                self._beat += 1
                self._write()

    def reset(self) -> None:
        """Before a run (after the ranks agreed on the work): this rank starts at 0, and its heartbeat starts."""
        self.report(0)
        if self.world_size > 1 and self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat, name="engine-heartbeat", daemon=True)
            self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self._lock:
                    self._beat += 1
                    self._write()
            except OSError as err:  # a full disk: the others will see the silence; this rank's own writes fail too
                logger.warning("rank %d: heartbeat not written (%s)", self.rank, err)

    def stop(self) -> None:
        """Stop the heartbeat (the run is over for this rank)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 1)
            self._thread = None

    def states(self) -> list[dict]:
        """Every rank's last report (``done`` 0 and ``starting`` for a rank that has not written yet)."""
        out = []
        for r in range(self.world_size):
            if r == self.rank:
                out.append({"done": self.done, "state": self.state})
                continue
            try:
                out.append(json.loads(self._path(r).read_text()))
            except (OSError, ValueError):
                out.append({"done": 0, "state": "starting"})
        return out

    def total_done(self) -> int:
        return sum(int(s.get("done", 0)) for s in self.states()) if self.world_size > 1 else self.done

    def check_peers(self, states: list[dict] | None = None) -> None:
        """Raise :class:`RunError` when a rank that has not finished is gone (its process ended, on this machine) or
        silent (its heartbeat has not moved for ``timeout_s``)."""
        if self.world_size == 1:
            return
        now = time.monotonic()
        for r, s in enumerate(states if states is not None else self.states()):
            if r == self.rank or s.get("state") in ("finished", "failed"):
                continue
            pid = s.get("pid")
            if pid and s.get("host") == self._me["host"] and not process_alive(int(pid), s.get("start")):
                raise RunError(
                    f"rank {r} (process {pid}) ended without finishing its share; rank {self.rank} stops too. The "
                    f"images made so far stay in the output folder: run the same command again to resume"
                )
            beat = s.get("beat")
            last, since = self._seen.get(r, (None, now))
            if beat != last or r not in self._seen:
                self._seen[r] = (beat, now)
            elif now - since > self.timeout_s:
                raise RunError(
                    f"rank {r} has been silent for {now - since:.0f} s (--rank_timeout {self.timeout_s:g}): its "
                    f"process hangs or its machine is gone; rank {self.rank} stops. The images made so far stay in the "
                    "output folder: run the same command again to resume"
                )

    def wait_all(self, on_poll: Any = None) -> None:
        """Block until every other rank reports ``finished`` (``on_poll()`` is called between polls); a rank that
        failed, ended or went silent meanwhile stops the wait with a :class:`RunError`."""
        if self.world_size == 1:
            return
        while True:
            states = self.states()
            others = {r: s for r, s in enumerate(states) if r != self.rank}
            failed = [r for r, s in others.items() if s.get("state") == "failed"]
            if failed:
                raise RunError(f"sampling failed on rank(s) {failed}; see their error above (the finished images stay)")
            if all(s.get("state") == "finished" for s in others.values()):
                return
            self.check_peers(states)
            if on_poll is not None:
                on_poll()
            time.sleep(self.poll_s)
