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
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from solidx.gradlib.backends import LIBTYPES, get_backend
from solidx.gradlib.backends.base import Backend, Solution, parse_spec
from solidx.gradlib.device import device_identity
from solidx.gradlib.operands import make_operands, max_rel_err, reference_gemm, tolerance
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.timing import (
    Timer,
    Timing,
    TimingConfig,
    calibrate,
    interleave,
    make_timer,
    measure,
    rotating_copies,
)

DEFAULT_SPEC = "default:"
SLOW_CUTOFF = 2.0
"""A candidate whose first sample is this many times the default's is sampled no further."""


@dataclass(frozen=True)
class BackendInfo:
    available: bool
    reason: str = ""
    version: str | None = None


@dataclass(frozen=True)
class Hello:
    """What a fresh child reports: the device it runs on and every backend it can load."""

    device: str
    sm_count: int
    torch_version: str
    backends: dict[str, BackendInfo]


@dataclass(frozen=True)
class Setup:
    default: Timing
    default_err: float
    tolerance: float
    launches: int
    copies: int


@dataclass(frozen=True)
class Outcome:
    """One candidate's screening: accepted with a timing, or rejected with the reason."""

    spec: str
    ok: bool
    timing: Timing | None = None
    max_rel_err: float = float("nan")
    reason: str = ""

    @classmethod
    def rejected(cls, spec: str, reason: str, err: float = float("nan")) -> Outcome:
        return cls(spec, False, None, err, reason)


class WorkerDied(RuntimeError):
    """The child died or hung while serving a request (it has been replaced)."""


class WorkerError(RuntimeError):
    """A request failed inside a healthy child (e.g. the problem cannot be set up)."""


class Rejected(Exception):
    """Raised inside the child when a candidate fails the correctness gate."""


def describe(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def load_backend(libtype: str, overrides: Mapping[str, str]) -> Backend:
    """The registry's backend for ``libtype``, or the class an override names as
    ``"package.module:Class"`` (how tests inject backends into the child)."""
    if libtype not in overrides:
        return get_backend(libtype)
    module_name, _, class_name = overrides[libtype].partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)()
    backend.libtype = libtype
    return backend


def problem_seed(problem: GemmProblem) -> int:
    """The operands of a problem are the same in every child (restarts included)."""
    return zlib.crc32(repr(problem.key()).encode())


# ---------------------------------------------------------------- the child


class _Runner:
    """The child's state: backends, device, and the problem being tuned."""

    def __init__(self, gpu: int | None, overrides: Mapping[str, str], config: TimingConfig) -> None:
        if gpu is not None:
            if not torch.cuda.is_available():
                raise RuntimeError(f"GPU {gpu} was asked for but torch sees no CUDA device")
            torch.cuda.set_device(gpu)
            self.device = torch.device("cuda", gpu)
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # CPU timings (CI) without thread-pool noise
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
        self.config = config
        self.backends: dict[str, Backend] = {}
        self.infos: dict[str, BackendInfo] = {}
        for libtype in dict.fromkeys((*LIBTYPES, *overrides)):
            try:
                backend = load_backend(libtype, overrides)
                ok, reason = backend.available()
                version = backend.version() if ok else None
            except Exception as exc:  # an unimplemented or broken backend is reported, not fatal
                self.infos[libtype] = BackendInfo(False, describe(exc))
                continue
            self.infos[libtype] = BackendInfo(ok, reason, version)
            if ok:
                self.backends[libtype] = backend
        self.problem: GemmProblem | None = None
        self.broken = False  # set when a failure left the CUDA context unusable

    def hello(self) -> Hello:
        name, sm_count = device_identity(self.device)
        return Hello(name, sm_count, torch.__version__, self.infos)

    def note_failure(self) -> None:
        """After an exception: mark the runner broken when the CUDA context no longer works."""
        if self.device.type != "cuda":
            return
        try:
            torch.cuda.synchronize(self.device)
            self.broken = float(torch.ones(1, device=self.device).add_(1).item()) != 2.0
        except Exception:
            self.broken = True

    def setup(self, problem: GemmProblem) -> Setup:
        self.problem = problem
        generator = torch.Generator().manual_seed(problem_seed(problem))
        self.ops = make_operands(problem, self.device, generator)
        self.ref = reference_gemm(problem, self.ops)
        self.tolerance = tolerance(problem)
        self.copies = rotating_copies(self.ops, self.config)
        self.default = self.backends["default"].from_spec(DEFAULT_SPEC, problem)
        self.default_err = self.check(self.default)
        self.launches = calibrate(self.default.run, self.copies, self.config)
        timer = make_timer(self.default.run, self.copies, self.launches, self.config)
        try:
            self.default_timing = measure(timer, self.config.screen_repeats)
        finally:
            timer.close()
        return Setup(self.default_timing, self.default_err, self.tolerance, self.launches,
                     len(self.copies))

    def candidates(self, libtype: str) -> list[str]:
        backend = self.backends.get(libtype)
        if backend is None:
            raise ValueError(f"backend {libtype!r} is not available: {self.infos[libtype].reason}")
        return [solution.spec for solution in backend.solutions(self.problem)]

    def solution(self, spec: str) -> Solution:
        libtype, _ = parse_spec(spec)
        if libtype not in self.backends:
            raise ValueError(f"backend {libtype!r} is not available")
        solution = self.backends[libtype].from_spec(spec, self.problem)
        if solution.spec != spec:
            raise Rejected(f"spec does not round-trip: rebuilt as {solution.spec!r}")
        return solution

    def check(self, solution: Solution) -> float:
        """Run twice on different copies; the larger max_rel_err against the fp32 reference.
        Rejected when the output is not a ``[N, M]`` tensor of the problem's outdtype."""
        problem, err = self.problem, 0.0
        for ops in (self.copies[0], self.copies[-1]):
            out = solution.run(ops)
            if not isinstance(out, torch.Tensor):
                raise Rejected(f"returned {type(out).__name__}, not a tensor")
            if tuple(out.shape) != (problem.N, problem.M) or out.dtype != problem.outdtype:
                raise Rejected(
                    f"returned {out.dtype} {list(out.shape)}, expected {problem.outdtype} "
                    f"[{problem.N}, {problem.M}]"
                )
            err = max(err, max_rel_err(out, self.ref))
        return err

    def screen(self, spec: str) -> Outcome:
        err = float("nan")
        try:
            solution = self.solution(spec)
            err = self.check(solution)
            if not err <= self.tolerance:
                return Outcome.rejected(spec, f"wrong result: max_rel_err {err:.3g} > tolerance "
                                              f"{self.tolerance:.3g}", err)
            timer = make_timer(solution.run, self.copies, self.launches, self.config)
            try:
                samples = [timer.sample()]
                if samples[0] < SLOW_CUTOFF * self.default_timing.median_ms:
                    samples += [timer.sample() for _ in range(self.config.screen_repeats - 1)]
            finally:
                timer.close()
            return Outcome(spec, True, Timing.of(samples), err)
        except Rejected as exc:
            return Outcome.rejected(spec, str(exc), err)
        except Exception as exc:
            self.note_failure()
            return Outcome.rejected(spec, describe(exc), err)

    def final(self, specs: list[str]) -> dict[str, Timing]:
        solutions = [self.default] + [self.solution(spec) for spec in specs]
        timers: list[Timer] = []
        try:
            for solution in solutions:
                timers.append(make_timer(solution.run, self.copies, self.launches, self.config))
            timings = interleave(timers, self.config.final_rounds)
        finally:
            for timer in timers:
                timer.close()
        return dict(zip([DEFAULT_SPEC, *specs], timings))


def _serve(conn: Connection, gpu: int | None, overrides: dict[str, str],
           config: TimingConfig) -> None:
    """The child's loop: answer each ``(method, args)`` request with ``(status, payload,
    broken)`` until ``stop`` or the parent goes; exit after answering once ``broken``."""
    try:
        runner = _Runner(gpu, overrides, config)
        conn.send(("ok", runner.hello(), False))
    except Exception as exc:
        conn.send(("error", describe(exc), True))
        return
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if method == "stop":
            return
        try:
            answer = ("ok", getattr(runner, method)(*args), runner.broken)
        except Exception as exc:
            runner.note_failure()
            answer = ("error", describe(exc), runner.broken)
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return
        if runner.broken:
            os._exit(3)  # the CUDA context is unusable: the parent starts a fresh child


# ---------------------------------------------------------------- the parent's handle


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
            target=_serve, args=(child, self.gpu, self.overrides, self.config),
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

    def _kill(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(10)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

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
