"""Recording the GEMM problems running layers issue.

Layers call ``active_recorder()`` and, when it is not None, ``record(problem, layer)``: with no
recorder active the cost is one global read. ``recording(path)`` activates a recorder and merges
what it saw into the shapes file when it exits; ``start_recording(path)`` (``TUNE_FP8=1``) checks
the shapes file at once and merges at exit and on SIGTERM / SIGINT, never losing rows silently;
``record_linears(module)`` records every ``nn.Linear`` under a module tree through forward hooks
(Hugging Face models too).

Layer names are stored with their numeric parts as ``*`` (``model.layers.*.mlp.down_proj``), so a
row names the kind of layer that issued it without listing every decoder layer.
"""
from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import check_target
from solidx.gradlib.shapes_file import ShapeRow, add_to_shapes_file, read_shapes, write_shapes

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def layer_pattern(name: str) -> str:
    """``model.layers.12.mlp.down_proj`` -> ``model.layers.*.mlp.down_proj``."""
    return _INDEX.sub("*", name)


class ShapeRecorder:
    """Counts distinct problems and the layers that issued them; thread-safe. With ``dtypes``,
    only problems whose operand dtype is one of them are kept (``TUNE_FP8``: fp8 GEMMs only)."""

    def __init__(self, dtypes: frozenset[torch.dtype] | None = None) -> None:
        self.dtypes = dtypes
        self.also: list[ShapeRecorder] = []  # recorders of other files that see every call too
        self._lock = threading.RLock()  # a signal handler may flush while record() holds it
        self._counts: Counter[GemmProblem] = Counter()
        self._layers: dict[GemmProblem, list[str]] = {}

    def record(self, problem: GemmProblem, layer: str) -> None:
        for other in self.also:
            other.record(problem, layer)
        if self.dtypes is not None and problem.dtype not in self.dtypes:
            return
        pattern = layer_pattern(layer)
        with self._lock:
            self._counts[problem] += 1
            layers = self._layers.setdefault(problem, [])
            if pattern and pattern not in layers:
                layers.append(pattern)

    def rows(self) -> list[ShapeRow]:
        with self._lock:
            return [ShapeRow(p, n, tuple(self._layers[p])) for p, n in self._counts.items()]

    def flush(self, path: str) -> list[ShapeRow]:
        """Merge what was recorded into the shapes file at ``path`` and start counting afresh;
        if the merge fails the rows stay recorded (and the error propagates)."""
        with self._lock:
            rows = [ShapeRow(p, n, tuple(self._layers[p])) for p, n in self._counts.items()]
            self._counts.clear()
            self._layers.clear()
        if rows:
            try:
                add_to_shapes_file(path, rows)
            except BaseException:
                self._put_back(rows)
                raise
        return rows

    def _put_back(self, rows: list[ShapeRow]) -> None:
        with self._lock:
            for row in rows:
                self._counts[row.problem] += row.count
                layers = self._layers.setdefault(row.problem, [])
                layers.extend(x for x in row.layers if x not in layers)


_active: ShapeRecorder | None = None


def active_recorder() -> ShapeRecorder | None:
    """The recorder layers should report to, or None when shape capture is off."""
    return _active


@contextmanager
def recording(path: str | None = None) -> Iterator[ShapeRecorder]:
    """Activate a recorder; on exit merge its rows into ``path`` (when given) and restore the
    previously active one."""
    global _active
    previous, recorder = _active, ShapeRecorder()
    _active = recorder
    try:
        yield recorder
    finally:
        _active = previous
        if path is not None:
            recorder.flush(path)


def check_shapes_file(path: str) -> None:
    """Refuse, before a run, a shapes file capture could not merge into at its end: a link,
    another user's file in a shared directory, a malformed file (UnsafeFileError, CsvError)."""
    check_target(Path(path))
    if Path(path).exists():
        read_shapes(path)


def rescue_path(path: str) -> Path:
    """Where rows that could not be merged into ``path`` are written instead: beside it."""
    return Path(f"{path}.rescued-{os.getpid()}.csv")


def flush_or_rescue(recorder: ShapeRecorder, path: str) -> bool:
    """Merge the recorded rows into ``path``; if that fails, write them to :func:`rescue_path`
    (a new file of their own) and say on stderr where: False then, True when merged."""
    try:
        recorder.flush(path)
        return True
    except Exception as exc:  # any failure: the rows must not be lost
        rows = recorder.rows()
        rescue = rescue_path(path)
        try:
            write_shapes(rescue, rows)
            where = f"they are in {rescue} (merge them later: solidx csv merge)"
        except Exception as again:
            where = f"writing them to {rescue} failed too ({again}): they are lost"
        sys.stderr.write(f"solidx: shape capture could not merge {len(rows)} rows into {path}: "
                         f"{exc}; {where}\n")
        return False


def _flush_at_exit(recorder: ShapeRecorder, path: str) -> None:
    """At exit: merge, or rescue and end the process with status 1 (never 0 with rows lost)."""
    if not flush_or_rescue(recorder, path):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _install_signal_flush(recorder: ShapeRecorder, path: str) -> None:
    """On SIGTERM and SIGINT merge (or rescue) the rows first, then do what the signal did
    before: the previous handler, or the default action (a SIGTERM still ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN or previous is None:
            continue

        def handler(num: int, frame, previous=previous) -> None:
            flush_or_rescue(recorder, path)
            signal.signal(num, previous)
            if callable(previous):
                previous(num, frame)
            else:
                os.kill(os.getpid(), num)

        signal.signal(signum, handler)


_started: dict[str, ShapeRecorder] = {}


def start_recording(path: str, dtypes: frozenset[torch.dtype] | None = None) -> ShapeRecorder:
    """Turn capture on for the rest of the process (``TUNE_FP8=1``, ``VLLM_TUNE_GEMM=1``): the
    shapes file is checked now (:func:`check_shapes_file`); the rows of ``dtypes`` (None: all)
    are merged into ``path`` at exit and on SIGTERM / SIGINT; rows that cannot be merged are
    written beside it and the process exits with 1. Another path gets its own recorder, fed
    every call too; the same path again widens its recorder's dtypes."""
    global _active
    recorder = _started.get(path)
    if recorder is not None:
        if recorder.dtypes is not None:
            recorder.dtypes = None if dtypes is None else recorder.dtypes | dtypes
        return recorder
    check_shapes_file(path)
    recorder = _started[path] = ShapeRecorder(dtypes)
    atexit.register(_flush_at_exit, recorder, path)
    _install_signal_flush(recorder, path)
    if _active is None:
        _active = recorder
    else:
        _active.also.append(recorder)
    return recorder


def _linear_hook(recorder: ShapeRecorder, name: str):
    def hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        problem = GemmProblem.for_linear(
            module.out_features, x.numel() // x.shape[-1], module.in_features,
            bias=module.bias is not None, dtype=module.weight.dtype, outdtype=output.dtype,
        )
        recorder.record(problem, name)
    return hook


@contextmanager
def record_linears(module: nn.Module,
                   recorder: ShapeRecorder | None = None) -> Iterator[ShapeRecorder]:
    """Record every ``nn.Linear`` call under ``module`` (through forward hooks) while inside."""
    recorder = recorder or ShapeRecorder()
    handles = [
        sub.register_forward_hook(_linear_hook(recorder, name))
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear)
    ]
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
