"""The thread that steps the engine, and the loop the other tensor-parallel ranks follow.

Requests arrive and leave through commands (``Add``, ``Abort``) queued from any thread. Each
iteration the leader (rank 0) takes the queued commands, broadcasts them to the other ranks
(``torch.distributed.broadcast_object_list``; an empty list at least every ``IDLE_S`` seconds so
an idle server never lets a collective time out), applies them and steps the engine; the
followers apply the same commands and step too, so every rank runs the same schedule.

An exception inside a step fails the requests that were unfinished (they are aborted, and the
error is reported for each), not the loop; one in adding a request fails that request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch
import torch.distributed as dist
from solidx.runtime.distributed import get_tp_rank, get_tp_size, peers_needed
from solidx.runtime.engine import LLMEngine
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

IDLE_S = 0.5
STATS_S = 0.1


@dataclass(frozen=True)
class Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class Abort:
    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    pass


Command = Union[Add, Abort, Stop]


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken after each step: sequences running and waiting in the scheduler, and
    ``num_added``, the ``Add`` commands applied so far."""

    running: int
    waiting: int
    kv_cache_usage: float  # share of the KV blocks in use, 0..1
    num_preemptions: int
    num_added: int


def engine_stats(engine: LLMEngine, num_added: int) -> EngineStats:
    scheduler = engine.scheduler
    blocks = scheduler.block_manager
    used = blocks.num_blocks - blocks.num_free_blocks
    return EngineStats(
        len(scheduler.running), len(scheduler.waiting), used / max(blocks.num_blocks, 1),
        scheduler.num_preemptions, num_added,
    )


class _Applier:
    """Applies commands to an engine and steps it; the same on every rank."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.live: set[str] = set()
        self.num_added = 0

    def apply(self, commands: list[Command]) -> tuple[bool, dict[str, str]]:
        """Apply ``commands``: (False once a ``Stop`` is among them, {request id: error} of the
        requests the engine refused to add)."""
        failed: dict[str, str] = {}
        for command in commands:
            if isinstance(command, Stop):
                return False, failed
            if isinstance(command, Add):
                self.num_added += 1
                try:
                    self.engine.add_request(command.request_id, command.prompt_token_ids,
                                            command.params)
                except Exception as exc:  # this request fails; the loop goes on
                    logger.exception("adding request %s failed", command.request_id)
                    failed[command.request_id] = f"{type(exc).__name__}: {exc}"
                    continue
                self.live.add(command.request_id)
            else:
                self.engine.abort_request(command.request_ids)
                self.live.difference_update(command.request_ids)
        return True, failed

    def step(self) -> tuple[list[RequestOutput], dict[str, str]]:
        """One engine step: (outputs, {request id: error} of the requests an exception failed:
        every unfinished one)."""
        try:
            outputs = self.engine.step()
        except Exception as exc:  # the step's requests fail; the loop goes on
            failed = sorted(self.live)
            logger.exception("engine step failed; failing requests %s", failed)
            self.engine.abort_request(failed)
            self.live.clear()
            message = f"the engine step failed: {type(exc).__name__}: {exc}"
            return [], dict.fromkeys(failed, message)
        self.live.difference_update(out.request_id for out in outputs if out.finished)
        return outputs, {}


def _broadcast(commands: list[Command] | None) -> list[Command]:
    box = [commands]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class EngineLoop(threading.Thread):
    """Rank 0's stepping thread. ``on_step(outputs, failed, stats)`` (``failed``: {request id:
    error}) is called on this thread with the results of a step that had outputs or failures,
    applied commands, or came ``STATS_S`` seconds after the last report.

    With asynchronous scheduling (``--async-scheduling``) ``step`` returns once the next
    batch is queued on the device, so the event loop's work on a step's results runs while the
    device computes, not against this thread's host work for the next batch (the two threads
    share the GIL, and the stepping thread lets it go at every torch call)."""

    def __init__(
        self,
        engine: LLMEngine,
        on_step: Callable[[list[RequestOutput], dict[str, str], EngineStats], None],
    ) -> None:
        super().__init__(name="solidx-engine", daemon=True)
        self._applier = _Applier(engine)
        self._on_step = on_step
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()

    def submit(self, command: Command) -> None:
        """Queue a command (any thread)."""
        self._commands.put(command)

    def run(self) -> None:
        engine = self._applier.engine
        if engine.config.torch_device.type == "cuda":  # the current device is per thread
            torch.cuda.set_device(engine.config.torch_device)
        reported = time.monotonic()
        with peers_needed():
            while True:
                commands = self._take(block=not engine.has_unfinished_requests())
                if get_tp_size() > 1:
                    commands = _broadcast(commands)
                keep_going, failed = self._applier.apply(commands)
                if not keep_going:
                    return
                outputs: list[RequestOutput] = []
                if engine.has_unfinished_requests():
                    outputs, step_failed = self._applier.step()
                    failed.update(step_failed)
                now = time.monotonic()
                if outputs or failed or commands or now - reported > STATS_S:
                    reported = now
                    self._on_step(outputs, failed, engine_stats(engine, self._applier.num_added))

    def _take(self, block: bool) -> list[Command]:
        commands: list[Command] = []
        if block:
            try:
                commands.append(self._commands.get(timeout=IDLE_S))
            except queue.Empty:
                return commands
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands


def follow(engine: LLMEngine) -> None:
    """A rank other than 0: apply rank 0's commands and step with it until it stops."""
    if get_tp_rank() == 0:
        raise RuntimeError("follow() is for the ranks other than 0; rank 0 runs the EngineLoop")
    applier = _Applier(engine)
    if engine.config.torch_device.type == "cuda":
        torch.cuda.set_device(engine.config.torch_device)
    with peers_needed():
        while applier.apply(_broadcast(None))[0]:
            if engine.has_unfinished_requests():
                applier.step()
