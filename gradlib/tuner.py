"""The tuner: for every problem of a shapes file, the fastest correct solution of every backend,
kept only where it beats the default by a margin, appended to a tuned file as each problem ends.

For each problem, on one GPU (one :class:`solidx.gradlib.worker.Worker` child per GPU):

1. *screen*: every candidate of every requested backend goes through the correctness gate
   (against the fp32 reference; ``max_rel_err`` ≤ :func:`solidx.gradlib.operands.tolerance`) and a
   cheap timing; a candidate that raises, returns garbage, hangs or kills its process is
   rejected with the reason (in the log file) and the sweep goes on;
2. *final*: the fastest few re-timed in turns with the default (A B A B);
3. *margin*: the best finalist wins only if ``default_ms / ms ≥ 1 + margin``, else the row keeps
   ``libtype=default``: a tuned file never makes a shape slower;
4. the row is merged into the tuned file under its lock at once, so an interrupted run loses no
   finished problem, and a re-run skips the problems already tuned for this device and these
   library builds (:func:`solidx.gradlib.tuned_file.select_rows`).

``gpus`` shards the problems over one worker per GPU (a shared queue); all rows land in one file.
Tunes of one file that run at once share the work: each problem is claimed before it starts
(:mod:`solidx.gradlib.tune_claims`), so a second run skips what the first finished or holds. A
problem whose operands do not fit the device is refused before anything is allocated
(:mod:`solidx.gradlib.tune_limits`); a dead run's temp files are removed at start.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from solidx.gradlib.backends import LIBTYPES
from solidx.gradlib.backends.base import spec_hash
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import open_append, remove_stale_temps
from solidx.gradlib.shapes_file import read_shapes
from solidx.gradlib.timing import Timing
from solidx.gradlib.tune_claims import Claims
from solidx.gradlib.tune_limits import device_memory, too_big
from solidx.gradlib.tune_options import TuneOptions
from solidx.gradlib.tune_signals import Interrupt, TuneInterrupted, interruptible
from solidx.gradlib.tune_report import ShapeResult, TuneReport
from solidx.gradlib.tuned_file import TunedRow, add_to_tuned_file, read_tuned, select_rows
from solidx.gradlib.worker import Worker, WorkerDied, WorkerError
from solidx.gradlib.worker_messages import DEFAULT_SPEC, Hello, Outcome, Setup

logger = logging.getLogger("solidx.gradlib.tuner")

MAX_CONSECUTIVE_DEATHS = 3


def load_problems(
    input_file: str | Path, dtype: torch.dtype = FP8, outdtype: torch.dtype = torch.bfloat16
) -> list[GemmProblem]:
    """The distinct problems of a shapes file in file order (``dtype``/``outdtype`` fill in files
    without those columns)."""
    problems = {row.problem.key(): row.problem for row in read_shapes(input_file, dtype, outdtype)}
    return list(problems.values())


def already_tuned(tuned_file: str | Path, hello: Hello) -> set[tuple]:
    """Keys of the problems the tuned file holds for this device and these library builds."""
    if not Path(tuned_file).exists():
        return set()
    versions = {lib: info.version for lib, info in hello.backends.items() if info.available}
    selection = select_rows(read_tuned(tuned_file), hello.device, hello.sm_count, versions.get)
    return {row.problem.key() for row in selection.rows}


def _row(problem: GemmProblem, hello: Hello, spec: str, timing: Timing, default: Timing,
         err: float) -> TunedRow:
    libtype = spec.partition(":")[0]
    ms = timing.median_ms
    seconds = ms * 1e-3
    return TunedRow(
        problem=problem, libtype=libtype, solidx=spec_hash(spec), soltimems=ms, solution=spec,
        default_ms=default.median_ms, speedup=default.median_ms / ms,
        tflops=problem.flops / seconds / 1e12, gbps=problem.min_bytes / seconds / 1e9,
        max_rel_err=err, device=hello.device, sm_count=hello.sm_count,
        lib_version=hello.backends[libtype].version or "", torch_version=hello.torch_version,
        tuned_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


class _Run:
    """State shared by the threads of one tuning run: queue, file, log, progress, results."""

    def __init__(self, problems: Sequence[GemmProblem], tuned_file: Path, options: TuneOptions,
                 libtypes: Sequence[str], claims: Claims) -> None:
        from tqdm import tqdm

        self.options, self.tuned_file, self.libtypes = options, tuned_file, libtypes
        self.claims = claims
        self.skipped: list[GemmProblem] = []
        self.queue: queue.Queue[GemmProblem] = queue.Queue()
        for problem in problems:
            self.queue.put(problem)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.results: list[ShapeResult] = []
        self.errors: list[BaseException] = []
        self.tried = self.rejected = 0
        self.log = open_append(options.log_file or f"{tuned_file}.candidates.jsonl")
        self.bar = tqdm(total=len(problems), unit="shape", desc="tune",
                        disable=not options.progress,
                        dynamic_ncols=True)

    def write(self, worker: Worker, problem: GemmProblem, stage: str, entry: dict) -> None:
        line = json.dumps({"problem": str(problem), "worker": worker.name, "stage": stage, **entry})
        with self.lock:
            self.log.write(line + "\n")
            self.log.flush()

    def record(self, worker: Worker, problem: GemmProblem, outcome: Outcome,
               stage: str = "screen", seconds: float = math.nan) -> None:
        """Log one timing (``stage`` ``screen`` or ``final``) and the wall time it took;
        screened candidates are counted."""
        self.write(worker, problem, stage, {
            "spec": outcome.spec, "ok": outcome.ok,
            "ms": outcome.timing.median_ms if outcome.timing else None,
            "spread": outcome.timing.spread if outcome.timing else None,
            "max_rel_err": None if math.isnan(outcome.max_rel_err) else outcome.max_rel_err,
            "reason": outcome.reason, "seconds": None if math.isnan(seconds) else seconds,
        })
        counted = stage == "screen" and outcome.spec != DEFAULT_SPEC
        with self.lock:
            self.tried += counted
            self.rejected += counted and not outcome.ok
            self.bar.set_postfix(candidates=self.tried, rejected=self.rejected, refresh=False)
        if not outcome.ok:
            logger.info("%s: rejected %s: %s", problem, outcome.spec, outcome.reason)

    def finish(self, result: ShapeResult) -> None:
        if result.row is not None:
            add_to_tuned_file(self.tuned_file, [result.row])  # locked merge: safe across processes
        with self.lock:
            self.results.append(result)
            self.bar.update(1)
        if result.error and not self.stop.is_set():
            logger.warning("%s: %s", result.problem, result.error)

    def skip(self, problem: GemmProblem, reason: str) -> None:
        logger.info("%s: skipped: %s", problem, reason)
        with self.lock:
            self.skipped.append(problem)
            self.bar.update(1)

    def close(self) -> None:
        self.claims.release()
        self.bar.close()
        self.log.close()


def _screen_all(run: _Run, worker: Worker, problem: GemmProblem,
                result: ShapeResult) -> list[Outcome]:
    outcomes: list[Outcome] = []
    deaths = 0
    for libtype in run.libtypes:
        started = time.monotonic()
        try:
            specs = worker.candidates(libtype)
        except (WorkerDied, WorkerError) as exc:
            logger.warning("%s: listing %s candidates failed: %s", problem, libtype, exc)
            entry = {"libtype": libtype, "ok": False, "reason": str(exc)}
            run.write(worker, problem, "list", entry)
            continue
        run.write(worker, problem, "list", {"libtype": libtype, "ok": True, "count": len(specs),
                                            "seconds": time.monotonic() - started})
        for spec in specs[: run.options.max_candidates]:
            if run.stop.is_set():
                return outcomes
            started = time.monotonic()
            try:
                outcome = worker.screen(spec)
                deaths = 0
            except WorkerDied as exc:
                outcome = Outcome.rejected(spec, str(exc))
                deaths += 1
                logger.warning("%s: %s", problem, exc)
            except WorkerError as exc:
                outcome = Outcome.rejected(spec, str(exc))
            run.record(worker, problem, outcome, seconds=time.monotonic() - started)
            outcomes.append(outcome)
            result.tried += 1
            result.rejected += not outcome.ok
            if deaths >= MAX_CONSECUTIVE_DEATHS:
                raise WorkerError(f"the worker died on {deaths} candidates in a row")
    return outcomes


def _final(worker: Worker, setup: Setup, finalists: list[Outcome]) -> dict[str, Timing]:
    """The finalists and the default timed in turns; on a worker death, once more, then the
    default's screening time alone (the row keeps default)."""
    for _ in range(2):
        try:
            return worker.final([o.spec for o in finalists])
        except (WorkerDied, WorkerError) as exc:
            logger.warning("final timing failed: %s", exc)
    return {DEFAULT_SPEC: setup.default}


def choose_winner(timings: Mapping[str, Timing], margin: float,
                  rocblas_margin: float = 0.0) -> str:
    """The fastest spec if it beats ``timings[DEFAULT_SPEC]`` by ``margin`` (``default_ms / ms ≥
    1 + margin``), else the default's spec. gradlib's preference: a fastest ``rocblas`` spec
    gives way to the fastest ``hipblaslt`` one unless
    ``ms ≤ (1 - rocblas_margin) · hipblaslt_ms``."""
    default = timings[DEFAULT_SPEC].median_ms
    best = min(timings, key=lambda spec: timings[spec].median_ms)
    lt = [s for s in timings if s.startswith("hipblaslt:")]
    if best.startswith("rocblas:") and lt:
        fastest_lt = min(lt, key=lambda spec: timings[spec].median_ms)
        if timings[best].median_ms > (1 - rocblas_margin) * timings[fastest_lt].median_ms:
            best = fastest_lt
    if best != DEFAULT_SPEC and default / timings[best].median_ms >= 1 + margin:
        return best
    return DEFAULT_SPEC


def tune_one(run: _Run, worker: Worker, problem: GemmProblem) -> ShapeResult:
    """Screen, final, margin rule; the row for one problem (or the failure)."""
    result = ShapeResult(problem, worker=worker.name)
    hello = worker.hello
    started = time.monotonic()
    try:
        setup = worker.setup(problem)
        run.record(worker, problem, Outcome(DEFAULT_SPEC, True, setup.default, setup.default_err),
                   seconds=time.monotonic() - started)
        outcomes = _screen_all(run, worker, problem, result)
    except (WorkerDied, WorkerError) as exc:
        result.error = f"not tuned: {exc}"
        return result
    if run.stop.is_set():
        result.error = "interrupted: not tuned"  # a partial sweep must not be written as done
        return result
    accepted = sorted((o for o in outcomes if o.ok), key=lambda o: o.timing.median_ms)
    finalists = [o for o in accepted if o.timing.median_ms < setup.default.median_ms]
    timings = _final(worker, setup, finalists[: run.options.finalists])
    errors = {o.spec: o.max_rel_err for o in accepted}
    for spec, timing in timings.items():
        outcome = Outcome(spec, True, timing, errors.get(spec, setup.default_err))
        run.record(worker, problem, outcome, "final")
    default = timings[DEFAULT_SPEC]
    winner = choose_winner(timings, run.options.margin, run.options.rocblas_margin)
    result.row = _row(problem, hello, winner, timings[winner], default,
                      errors.get(winner, setup.default_err))
    result.spread = max(default.spread, timings[winner].spread)
    return result


def _drive(run: _Run, worker: Worker) -> None:
    try:
        while not run.stop.is_set():
            try:
                problem = run.queue.get_nowait()
            except queue.Empty:
                return
            reason = run.claims.take(problem)
            if reason:
                run.skip(problem, reason)
                continue
            started = time.monotonic()
            result = tune_one(run, worker, problem)
            result.seconds = time.monotonic() - started
            run.finish(result)
            run.claims.release([problem])
    except BaseException as exc:  # reported by the main thread
        run.errors.append(exc)
        run.stop.set()


def check_options(options: TuneOptions) -> None:
    """Refuse, before any worker starts, backends that do not exist and GPUs this machine does
    not have (ValueError naming the keyword and the value)."""
    known = dict.fromkeys((*LIBTYPES, *options.backend_overrides))
    for name in options.backends:
        if name not in known:
            raise ValueError(f"backends={name!r} is not a backend (known: {', '.join(known)})")
    if not options.gpus:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = ",".join(map(str, options.gpus))
    if count == 0:
        raise ValueError(f"gpus={gpus}: this machine has no CUDA GPU (leave it out on a CPU)")
    missing = [g for g in options.gpus if g >= count]
    if missing:
        raise ValueError(f"gpus={gpus}: there is no GPU {missing[0]} (this machine has {count})")


def _start_workers(options: TuneOptions) -> list[Worker]:
    gpus: Iterable[int | None] = options.gpus if options.gpus else [None]
    workers = [
        Worker(gpu, options.timing, options.backend_overrides, options.candidate_timeout_s)
        for gpu in gpus
    ]
    try:
        for worker in workers:
            worker.start()
        hellos = [worker.ready() for worker in workers]
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    first = hellos[0]
    for worker, hello in zip(workers, hellos):
        if (hello.device, hello.sm_count) != (first.device, first.sm_count):
            for w in workers:
                w.close()
            raise ValueError(
                f"--gpus must name identical GPUs: {workers[0].name} is {first.device} "
                f"({first.sm_count} SMs), {worker.name} is {hello.device} ({hello.sm_count} SMs)"
            )
    return workers


def tune_problems(problems: Sequence[GemmProblem], tuned_file: str | Path,
                  options: TuneOptions = TuneOptions()) -> TuneReport:
    """Tune ``problems`` into ``tuned_file`` (created or merged into); see the module doc.

    Workers are spawned processes: a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard. SIGINT or SIGTERM (in the main thread) kills the
    workers at once and raises :class:`TuneInterrupted`; finished problems' rows are kept."""
    check_options(options)
    with interruptible():
        try:
            workers = _start_workers(options)
        except Interrupt as stop:
            raise TuneInterrupted(stop.signum, 0, str(tuned_file)) from None
        try:
            return run_workers(workers, problems, tuned_file, options)
        finally:
            for worker in workers:
                worker.close()


def run_workers(workers: Sequence[Worker], problems: Sequence[GemmProblem],
                tuned_file: str | Path, options: TuneOptions) -> TuneReport:
    """Tune with started workers, one thread driving each, all taking problems from one queue
    and merging rows into one file."""
    started = time.monotonic()
    tuned_file = Path(tuned_file)
    hello = workers[0].hello
    report = TuneReport()
    libtypes = []
    for libtype in options.backends:
        info = hello.backends.get(libtype)
        if info is None:
            report.unavailable[libtype] = "unknown libtype"
        elif not info.available:
            report.unavailable[libtype] = info.reason
        else:
            libtypes.append(libtype)
    for libtype, reason in report.unavailable.items():
        logger.warning("backend %s skipped: %s", libtype, reason)
    remove_stale_temps(tuned_file)
    done = already_tuned(tuned_file, hello)
    unique = list({p.key(): p for p in problems}.values())
    report.skipped = [p for p in unique if p.key() in done]
    memory = device_memory(hello.device, options.gpus[0] if options.gpus else None)
    pending = []
    for problem in (p for p in unique if p.key() not in done):
        reason = too_big(problem, memory)
        if reason:
            logger.warning("%s", reason)
            report.results.append(ShapeResult(problem, error=reason))
        else:
            pending.append(problem)
    claims = Claims(tuned_file, lambda: already_tuned(tuned_file, hello))
    run = _Run(pending, tuned_file, options, libtypes, claims)
    threads = [threading.Thread(target=_drive, args=(run, w), name=f"tune-{w.name}", daemon=True)
               for w in workers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except Interrupt as stop:
        run.stop.set()
        for worker in workers:
            worker.kill()  # its request fails at once: the threads end after their current row
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        finished = sum(r.row is not None for r in run.results)
        raise TuneInterrupted(stop.signum, finished, str(tuned_file)) from None
    except BaseException:
        run.stop.set()  # the threads stop after their current request
        raise
    finally:
        run.close()
    if run.errors:
        raise run.errors[0]
    order = {p.key(): i for i, p in enumerate(unique)}
    report.results = sorted(report.results + run.results, key=lambda r: order[r.problem.key()])
    report.skipped += run.skipped
    report.elapsed_s = time.monotonic() - started
    return report


def tune(input_file: str | Path, tuned_file: str | Path, options: TuneOptions = TuneOptions(),
         dtype: torch.dtype = FP8, outdtype: torch.dtype = torch.bfloat16) -> TuneReport:
    """Tune every problem of the shapes file ``input_file`` into ``tuned_file``."""
    return tune_problems(load_problems(input_file, dtype, outdtype), tuned_file, options)
