"""Recording the GEMM problems running layers issue.

Layers call ``active_recorder()`` and, when it is not None, ``record(problem, layer)``: with no
recorder active the cost is one global read. ``recording(path)`` activates a recorder and merges
what it saw into the shapes file when it exits; ``record_linears(module)`` records every
``nn.Linear`` under a module tree through forward hooks (Hugging Face models too).

Layer names are stored with their numeric parts as ``*`` (``model.layers.*.mlp.down_proj``), so a
row names the kind of layer that issued it without listing every decoder layer.
"""
from __future__ import annotations

import atexit
import re
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.shapes_file import ShapeRow, add_to_shapes_file

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
        self._lock = threading.Lock()
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
        """Merge what was recorded into the shapes file at ``path`` and start counting afresh."""
        with self._lock:
            rows = [ShapeRow(p, n, tuple(self._layers[p])) for p, n in self._counts.items()]
            self._counts.clear()
            self._layers.clear()
        if rows:
            add_to_shapes_file(path, rows)
        return rows


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


_started: dict[str, ShapeRecorder] = {}


def start_recording(path: str, dtypes: frozenset[torch.dtype] | None = None) -> ShapeRecorder:
    """Turn capture on for the rest of the process (``TUNE_FP8=1``, ``VLLM_TUNE_GEMM=1``): the
    rows of ``dtypes`` (None: all) are merged into ``path`` at exit. Another path gets its own
    recorder, fed every call too; the same path again widens its recorder's dtypes."""
    global _active
    recorder = _started.get(path)
    if recorder is not None:
        if recorder.dtypes is not None:
            recorder.dtypes = None if dtypes is None else recorder.dtypes | dtypes
        return recorder
    recorder = _started[path] = ShapeRecorder(dtypes)
    atexit.register(recorder.flush, path)
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
