"""The tuner's worker child: it holds the backends, the problem's operands and its fp32
reference, and answers one request at a time over a pipe (:func:`serve`). The parent's side is
:class:`solidx.gradlib.worker.Worker`; the answers are :mod:`solidx.gradlib.worker_messages`.

A candidate whose failure leaves the CUDA context unusable makes the child exit after
answering, so the next candidate gets a fresh context.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import zlib
from collections.abc import Mapping
from multiprocessing.connection import Connection

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
from solidx.gradlib.worker_messages import DEFAULT_SPEC, BackendInfo, Hello, Outcome, Setup

SLOW_CUTOFF = 2.0
"""A candidate whose first sample is this many times the default's is sampled no further."""


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


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def tie_to_parent() -> None:
    """The parent alone ends the child: Ctrl-C (SIGINT to the terminal's whole process group)
    is ignored here, and on Linux the child gets SIGKILL when the parent dies (or the parent's
    thread that started it ends: the parent closes its workers after those threads anyway)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(1)


def serve(conn: Connection, gpu: int | None, overrides: dict[str, str],
           config: TimingConfig) -> None:
    """The child's loop: answer each ``(method, args)`` request with ``(status, payload,
    broken)`` until ``stop`` or the parent goes; exit after answering once ``broken``."""
    tie_to_parent()
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
