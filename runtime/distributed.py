"""Tensor-parallel state, start-up, collectives and fault handling.

The tensor-parallel group is the default torch.distributed group when one is initialized, else a
group of one where every collective returns its input unchanged. Each rank is a process started
by torchrun (or a Ray actor given the same variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); ``init_distributed`` joins the group over NCCL on CUDA (device cuda:LOCAL_RANK) or
gloo on CPU. Every rank then runs the same deterministic engine: no rank sends work to another.

Faults end every rank instead of hanging one: the ranks check at start that they were given the
same settings (``check_same_settings``); collectives time out after ``COLLECTIVE_TIMEOUT``; and a
watchdog thread per rank heartbeats through the rendezvous store: while a rank is inside a
section every rank must run (``peers_needed``: a generate call), a peer that stops heartbeating
or exits ends it within ``PEER_TIMEOUT_S`` with a message naming that peer. (NCCL would wait
for a dead peer until the timeout.) Outside such sections a peer's exit is only remembered, so
ranks may finish their own work and exit at their own pace.

At interpreter exit every rank stops its watchdog and destroys the process group
(``_shutdown``): a gloo group left to C++ static destruction aborts the process now and then
("terminate called without an active exception") after the work was done.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
import torch
import torch.distributed as dist

from solidx.runtime import envs
from solidx.runtime.config import Config
from solidx.runtime.custom_all_reduce import CustomAllReduce
from solidx.runtime.layers.fused.all_reduce_rms_norm import PeerBuffers
from solidx.runtime.launch import group_initialized, launch_rank, launch_world_size, rendezvous
from solidx.runtime.rendezvous import join_store

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # the last resort: the watchdog sees dead ranks
HEARTBEAT_S = 1.0
PEER_TIMEOUT_S = 10.0
# Settings that may differ between ranks: each rank names its own device.
PER_RANK_SETTINGS = ("device", "SOLIDX_LOG_LEVEL", "SOLIDX_RENDEZVOUS_TIMEOUT")


def get_tp_rank() -> int:
    return dist.get_rank() if group_initialized() else 0


def get_tp_size() -> int:
    return dist.get_world_size() if group_initialized() else 1


# -- collectives ----------------------------------------------------------------------------


def _collective_failed(op: str, exc: Exception) -> RuntimeError:
    known = f" ({_watchdog.problem})" if _watchdog is not None and _watchdog.problem else ""
    return RuntimeError(
        f"tensor-parallel {op} failed on rank {get_tp_rank()}: another rank has probably exited"
        f"{known}; its own error is in its log. ({exc})"
    )


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the tensor-parallel ranks: the custom all-reduce's new tensor for small
    GPU tensors, else ``x`` summed in place by the process group."""
    if get_tp_size() == 1:
        return x
    if _custom_all_reduce is not None and _custom_all_reduce_on and _custom_all_reduce.eligible(x):
        return _custom_all_reduce(x)
    try:
        dist.all_reduce(x)
    except RuntimeError as exc:
        raise _collective_failed("all_reduce", exc) from exc
    return x


def tp_fused_all_reduce(x: torch.Tensor) -> PeerBuffers | None:
    """The custom all-reduce's staging buffers when ``x``'s sum over the tensor-parallel ranks
    can be taken in the kernel that uses it (``all_reduce_rms_norm``; ``SOLIDX_FUSED_ALL_REDUCE``
    on), else None."""
    if _custom_all_reduce is None or not _fused_all_reduce_on:
        return None
    peers = _custom_all_reduce.peers
    return peers if peers is not None and x.is_cuda and peers.fits(x) else None


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``, rank order."""
    world = get_tp_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    try:
        dist.all_gather(parts, x.contiguous())
    except RuntimeError as exc:
        raise _collective_failed("all_gather", exc) from exc
    return torch.cat(parts, dim=dim)


def tp_min(value: int) -> int:
    """The smallest ``value`` over the tensor-parallel ranks."""
    if get_tp_size() == 1:
        return value
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    except RuntimeError as exc:
        raise _collective_failed("all_reduce(MIN)", exc) from exc
    return int(tensor.item())


# -- start-up -------------------------------------------------------------------------------

# Built once and kept: captured CUDA graphs of any engine in this process hold its buffer.
_custom_all_reduce: CustomAllReduce | None = None
_custom_all_reduce_on = False  # the current engine's choice (``disable_custom_all_reduce``)
_fused_all_reduce_on = False  # and SOLIDX_FUSED_ALL_REDUCE's


def init_distributed(config: Config) -> None:
    """Join the launch's process group when ``config.tensor_parallel_size`` > 1 (torchrun's
    variables say where; every rank must arrive within ``SOLIDX_RENDEZVOUS_TIMEOUT``:
    :mod:`solidx.runtime.rendezvous`; NCCL on CUDA, gloo on CPU), check that every rank has the
    same settings, start the watchdog and, on GPUs, set up the custom all-reduce. Nothing to do at
    size 1 outside a group. Safe to call again."""
    device = config.torch_device
    if not group_initialized():
        if config.tensor_parallel_size == 1:
            return
        store = join_store(envs.SOLIDX_RENDEZVOUS_TIMEOUT)  # bounded: names missing ranks
        store.set_timeout(COLLECTIVE_TIMEOUT)
        joined = dict(store=dist.PrefixStore("default_pg", store), rank=launch_rank(),
                      world_size=launch_world_size(), timeout=COLLECTIVE_TIMEOUT)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device, **joined)
        else:
            dist.init_process_group("gloo", **joined)
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    _register_shutdown()
    check_same_settings(settings_of(config))
    _start_watchdog()
    global _custom_all_reduce, _custom_all_reduce_on, _fused_all_reduce_on
    _custom_all_reduce_on = device.type == "cuda" and not config.disable_custom_all_reduce
    _fused_all_reduce_on = _custom_all_reduce_on and envs.SOLIDX_FUSED_ALL_REDUCE
    if _custom_all_reduce_on and _custom_all_reduce is None:
        _custom_all_reduce = CustomAllReduce.create(dist.group.WORLD, device, config.torch_dtype)
    if _fused_all_reduce_on and _custom_all_reduce is not None:
        _custom_all_reduce.enable_fused()


def settings_of(config: Config) -> dict[str, str]:
    """What must be equal on every rank: the config's fields and the environment variables
    solidx reads (``$NAME``), as text; per-rank ones (``PER_RANK_SETTINGS``) left out."""
    settings = {
        f.name: repr(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.init and f.name not in PER_RANK_SETTINGS
    }
    for name in envs.VARIABLES:
        if name not in PER_RANK_SETTINGS:
            settings[f"${name}"] = repr(os.environ.get(name))
    return settings


def check_same_settings(settings: dict[str, str]) -> None:
    """Raise ValueError on every rank, naming each differing setting and its value per rank,
    unless all ranks passed equal ``settings``."""
    world = get_tp_size()
    if world == 1:
        return
    gathered: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(gathered, settings)
    names = sorted(set().union(*(s or {} for s in gathered)))
    differing = []
    for name in names:
        values = [(s or {}).get(name, "<unset>") for s in gathered]
        if len(set(values)) > 1:
            per_rank = ", ".join(f"rank {r} = {v}" for r, v in enumerate(values))
            differing.append(f"{name}: {per_rank}")
    if differing:
        raise ValueError(
            "the tensor-parallel ranks were started with different settings (every rank must "
            "get the same arguments and environment): " + "; ".join(differing)
        )


# -- fault handling -------------------------------------------------------------------------


class _Watchdog(threading.Thread):
    """Heartbeats through the store and watches the peers' heartbeats (see the module doc)."""

    def __init__(self, store: dist.Store, rank: int, world: int) -> None:
        super().__init__(name="solidx-tp-watchdog", daemon=True)
        self.store, self.rank = store, rank
        self.peers = [r for r in range(world) if r != rank]
        self.problem: str | None = None
        self.busy = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        now = time.monotonic()
        seen = {peer: (-1, now) for peer in self.peers}
        while not self.stopped.wait(HEARTBEAT_S):
            problem = self._check(seen)  # heartbeats even after a problem: peers may be fine
            self.problem = self.problem or problem
            if self.problem is not None and self.busy:
                self._end_process()

    def _check(self, seen: dict[int, tuple[int, float]]) -> str | None:
        try:
            self.store.add(f"heartbeat/{self.rank}", 1)
            for peer in self.peers:
                if self.store.check([f"left/{peer}"]):
                    return f"rank {peer} has exited"
                count = self.store.add(f"heartbeat/{peer}", 0)
                last, since = seen[peer]
                now = time.monotonic()
                if count != last:
                    seen[peer] = (count, now)
                elif now - since > PEER_TIMEOUT_S:
                    return f"rank {peer} stopped responding (no heartbeat for {now - since:.0f} s)"
        except RuntimeError as exc:  # the store is gone with the process that hosted it
            return f"lost the rendezvous store: its host (torchrun or rank 0) has exited ({exc})"
        return None

    def _end_process(self) -> None:
        sys.stdout.flush()
        sys.stderr.write(
            f"solidx: tensor-parallel rank {self.rank}: {self.problem} while this rank needs it; "
            "ending this rank too (rather than waiting forever for its collectives)\n"
        )
        sys.stderr.flush()
        os._exit(1)

    def leave(self) -> None:
        """Tell the peers this rank exits on purpose; stop watching and wait for the thread, so
        that no store call is in flight while the interpreter shuts down."""
        self.stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(2 * HEARTBEAT_S + 1.0)
        with suppress(RuntimeError):  # the store's host has exited already: nobody to tell
            self.store.set(f"left/{self.rank}", "1")


_watchdog: _Watchdog | None = None


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is not None:
        return
    address = rendezvous()
    if address:  # a client of its own, never queued behind the main thread's store calls
        store = dist.TCPStore(*address, is_master=False, timeout=timedelta(seconds=30))
    else:
        store = dist.distributed_c10d._get_default_store()
    _watchdog = _Watchdog(dist.PrefixStore("solidx/watchdog", store), get_tp_rank(), get_tp_size())
    _watchdog.start()


_shutdown_registered = False


def _register_shutdown() -> None:
    global _shutdown_registered
    if not _shutdown_registered:
        atexit.register(_shutdown)
        _shutdown_registered = True


def _shutdown() -> None:
    """At exit: stop the watchdog (telling the peers), then destroy the process group while the
    interpreter is still whole."""
    if _watchdog is not None:
        _watchdog.leave()
    if group_initialized():
        with suppress(RuntimeError, ValueError):  # already torn down by the user's own code
            dist.destroy_process_group()


@contextmanager
def peers_needed() -> Iterator[None]:
    """A section every rank must run in step (a generate call): a peer that stops during it
    ends this process (see the module doc); one that stopped before raises RuntimeError here."""
    watchdog = _watchdog
    if watchdog is None:
        yield
        return
    if watchdog.problem is not None:
        raise RuntimeError(
            f"tensor-parallel rank {watchdog.rank} cannot run: {watchdog.problem} (every rank "
            "must make the same generate calls)"
        )
    watchdog.busy += 1
    try:
        yield
    finally:
        watchdog.busy -= 1
