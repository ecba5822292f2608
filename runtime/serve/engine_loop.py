"""The thread that steps the engine, and the loop the other tensor-parallel ranks follow.

Requests arrive and leave through commands (``Add``, ``Abort``) queued from any thread. Each
iteration the leader (rank 0) takes the queued commands, broadcasts them to the other ranks
(``torch.distributed.broadcast_object_list``; an empty list at least every ``IDLE_S`` seconds so
an idle server never lets a collective time out), applies them and steps the engine; the
followers apply the same commands and step too, so every rank runs the same schedule.

An exception inside a step fails the requests that were unfinished (they are aborted, and the
error is reported for each), not the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch.distributed as dist
from solidx.runtime.distributed import get_tp_rank, get_tp_size, peers_needed
from solidx.runtime.engine import LLMEngine
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

IDLE_S = 0.5


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
    """A snapshot taken after each step."""

    running: int
    waiting: int
    kv_cache_usage: float  # share of the KV blocks in use, 0..1
    num_preemptions: int


def engine_stats(engine: LLMEngine) -> EngineStats:
    scheduler = engine.scheduler
    blocks = scheduler.block_manager
    used = blocks.num_blocks - blocks.num_free_blocks
    return EngineStats(
        len(scheduler.running), len(scheduler.waiting), used / max(blocks.num_blocks, 1),
        scheduler.num_preemptions,
    )


class _Applier:
    """Applies commands to an engine and steps it; the same on every rank."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.live: set[str] = set()

    def apply(self, commands: list[Command]) -> bool:
        """Apply ``commands``; False once a ``Stop`` is among them."""
        for command in commands:
            if isinstance(command, Stop):
                return False
            if isinstance(command, Add):
                self.engine.add_request(command.request_id, command.prompt_token_ids,
                                        command.params)
                self.live.add(command.request_id)
            else:
                self.engine.abort_request(command.request_ids)
                self.live.difference_update(command.request_ids)
        return True

    def step(self) -> tuple[list[RequestOutput], list[str], str]:
        """One engine step: (outputs, ids of the requests failed by an exception, its text)."""
        try:
            outputs = self.engine.step()
        except Exception as exc:  # the step's requests fail; the loop goes on
            failed = sorted(self.live)
            logger.exception("engine step failed; failing requests %s", failed)
            self.engine.abort_request(failed)
            self.live.clear()
            return [], failed, f"{type(exc).__name__}: {exc}"
        self.live.difference_update(out.request_id for out in outputs if out.finished)
        return outputs, [], ""


def _broadcast(commands: list[Command] | None) -> list[Command]:
    box = [commands]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class EngineLoop(threading.Thread):
    """Rank 0's stepping thread. ``on_step(outputs, failed_ids, error, stats)`` is called on
    this thread after every step (and after commands change the engine's state)."""

    def __init__(
        self,
        engine: LLMEngine,
        on_step: Callable[[list[RequestOutput], list[str], str, EngineStats], None],
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
        with peers_needed():
            while True:
                commands = self._take(block=not engine.has_unfinished_requests())
                if get_tp_size() > 1:
                    commands = _broadcast(commands)
                if not self._applier.apply(commands):
                    return
                outputs, failed, error = [], [], ""
                if engine.has_unfinished_requests():
                    outputs, failed, error = self._applier.step()
                if outputs or failed or commands:
                    self._on_step(outputs, failed, error, engine_stats(engine))

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
    with peers_needed():
        while applier.apply(_broadcast(None)):
            if engine.has_unfinished_requests():
                applier.step()
