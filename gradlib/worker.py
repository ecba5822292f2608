"""Candidates run in a child process that the tuner can lose and restart.

A candidate may raise, return garbage, hang, or fault the CUDA context (an illegal address
leaves every later launch failing, or kills the process). The tuner therefore never runs one
itself: a :class:`Worker` owns a child process (``multiprocessing`` with ``spawn``) that holds
the backends, the problem's operands and its fp32 reference, and answers one request at a
time over a pipe:

* ``setup(problem)`` → :class:`Setup`: operands, reference, rotating copies, calls per sample,
  the default's screening time and error;
* ``candidates(libtype)`` → the backend's spec strings for the problem;
* ``screen(spec)`` → :class:`Outcome`: the correctness gate, then a cheap timing;
* ``final(specs)`` → ``{spec: Timing}``: the default and the finalists timed in turns.

A child that dies, or does not answer within the timeout, is killed and replaced; the request
raises :class:`WorkerDied` and the next request starts a new child and sets the problem up
again. A candidate whose failure leaves the CUDA context unusable makes the child exit after
answering, so the next candidate gets a fresh context.

This module is the parent's handle; the child is :mod:`solidx.gradlib.worker_child`, and what
it answers is :mod:`solidx.gradlib.worker_messages`.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from solidx.gradlib.device import device_identity
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.timing import Timing, TimingConfig
from solidx.gradlib.worker_child import serve
from solidx.gradlib.worker_messages import Hello, Outcome, Setup


class WorkerDied(RuntimeError):
    """The child died or hung while serving a request (it has been replaced)."""


class WorkerError(RuntimeError):
    """A request failed inside a healthy child (e.g. the problem cannot be set up)."""


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Worker:
    """The parent's handle on one child (one GPU). Requests restart the child as needed."""

    def __init__(
        self, gpu: int | None, config: TimingConfig, overrides: Mapping[str, str] | None = None,
        timeout_s: float = 120.0, start_timeout_s: float = 300.0,
    ) -> None:
        self.gpu, self.config = gpu, config
        self.overrides = dict(overrides or {})
        self.timeout_s, self.start_timeout_s = timeout_s, start_timeout_s
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._kill_lock = threading.Lock()  # kill() (a signal, another thread) and a death seen
        self._problem: GemmProblem | None = None
        self.hello: Hello | None = None

    @property
    def name(self) -> str:
        """``gpuN`` for an explicit GPU, else ``gpu`` or ``cpu`` (once the child said which)."""
        if self.gpu is not None:
            return f"gpu{self.gpu}"
        on_cpu = self.hello is None or self.hello.device == device_identity("cpu").name
        return "cpu" if on_cpu else "gpu"

    def start(self) -> None:
        """Spawn the child (returns at once; :meth:`ready` waits for it)."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=serve, args=(child, self.gpu, self.overrides, self.config),
            name=f"solidx-tune-{self.name}", daemon=True,
        )
        try:
            process.start()
        finally:
            child.close()
        self._process, self._conn = process, parent

    def ready(self) -> Hello:
        """Wait for the child's hello; WorkerDied when it cannot start."""
        self.hello = self._receive(self.start_timeout_s, "starting")
        return self.hello

    def _receive(self, timeout: float, doing: str) -> Any:
        """The child's answer; a child that hangs or dies is killed and WorkerDied raised."""
        conn, process = self._conn, self._process
        if conn is None or process is None:
            raise WorkerDied(f"no worker process while {doing}")
        try:
            if not conn.poll(timeout):
                self._kill()
                raise WorkerDied(f"no answer within {timeout:.0f} s while {doing} (killed)")
            status, payload, broken = conn.recv()
        except (EOFError, OSError):
            process.join(5)
            code = process.exitcode
            self._kill()
            raise WorkerDied(f"worker process died while {doing} ({_exit_reason(code)})") from None
        if broken:
            self._kill()  # it exits by itself; the next request starts a fresh one
        if status == "error":
            raise WorkerError(payload)
        return payload

    def kill(self) -> None:
        """Kill the child now (a request in flight fails with WorkerDied)."""
        self._kill()

    def _kill(self) -> None:
        """Kill the child and close its pipe; safe from two threads at once (one of them does
        it)."""
        with self._kill_lock:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(10)
        if conn is not None:
            conn.close()

    def _ensure(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._kill()
        self.restarts += 1
        self.start()
        self.ready()
        if self._problem is not None:
            self._call("setup", (self._problem,), self.timeout_s)

    def _call(self, method: str, args: tuple, timeout: float) -> Any:
        if self._conn is None:
            raise WorkerDied(f"no worker process for {method}")
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError):
            self._kill()
            raise WorkerDied(f"worker process gone before {method}") from None
        doing = f"running {method}" + (f" {args[0]}" if method == "screen" else "")
        return self._receive(timeout, doing)

    def request(self, method: str, *args: Any) -> Any:
        self._ensure()
        return self._call(method, args, self.timeout_s)

    def setup(self, problem: GemmProblem) -> Setup:
        self._problem = None
        self._ensure()
        setup = self._call("setup", (problem,), self.timeout_s)
        self._problem = problem
        return setup

    def candidates(self, libtype: str) -> list[str]:
        return self.request("candidates", libtype)

    def screen(self, spec: str) -> Outcome:
        return self.request("screen", spec)

    def final(self, specs: list[str]) -> dict[str, Timing]:
        timeout = self.timeout_s * (1 + len(specs))
        self._ensure()
        return self._call("final", (specs,), timeout)

    def close(self) -> None:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            try:
                self._conn.send(("stop", ()))
                self._process.join(10)
            except (BrokenPipeError, OSError):
                pass
        self._kill()
