"""Joining the ranks of a launch within a bounded time.

Ranks started by hand (the README's multi-node and Ray launches: ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` set per process) and torchrun's alike meet at the rendezvous
store (hosted by rank 0, or by torchrun's agent: ``TORCHELASTIC_USE_AGENT_STORE``); every rank
marks its arrival there, and a rank that has not seen every peer within
``SOLIDX_RENDEZVOUS_TIMEOUT`` seconds raises RuntimeError naming the missing ranks and the address,
instead of waiting for the collectives' ten-minute timeout.
"""
from __future__ import annotations

import time
from datetime import timedelta

import torch.distributed as dist
from solidx.runtime import envs
from solidx.runtime.launch import launch_rank, launch_world_size, rendezvous

_ARRIVED = "solidx/arrived/"
_POLL_S = 0.05


def join_store(timeout_s: float) -> dist.Store:
    """The rendezvous store once every rank of the launch has reached it (RuntimeError naming
    the missing ranks and the address after ``timeout_s``)."""
    address = rendezvous()
    rank, world = launch_rank(), launch_world_size()
    if address is None:
        raise RuntimeError(f"rank {rank} of {world}: MASTER_ADDR and MASTER_PORT must name the "
                           "rendezvous (rank 0's host and a free port)")
    where = f"{address[0]}:{address[1]}"
    host = rank == 0 and not envs.TORCHELASTIC_USE_AGENT_STORE  # else torchrun's agent hosts it
    try:
        store = dist.TCPStore(address[0], address[1], world, is_master=host,
                              timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    except RuntimeError as exc:
        role = "host" if host else "reach"
        raise RuntimeError(
            f"rank {rank} of {world} could not {role} the rendezvous at {where} within "
            f"{timeout_s:g} s (SOLIDX_RENDEZVOUS_TIMEOUT): "
            + ("is the port free?" if host else "has rank 0 started, on that address?")
            + f" ({exc})") from None
    store.set(f"{_ARRIVED}{rank}", "1")
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [r for r in range(world) if not store.check([f"{_ARRIVED}{r}"])]
        if not missing:
            return store
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"rank {rank} of {world}: rank(s) {', '.join(map(str, missing))} did not join "
                f"the rendezvous at {where} within {timeout_s:g} s (SOLIDX_RENDEZVOUS_TIMEOUT): "
                "start them with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or check that "
                "they can reach that address")
        time.sleep(_POLL_S)


__all__ = ["join_store"]
