"""solidx: a GEMM tuning toolchain and the LLM inference runtime that uses its results.

One installed package; the repository's folders are its subpackages: ``solidx.gradlib`` (GEMM
problems, backends, the tuner, the CSV files), ``solidx.shape_capture``, ``solidx.runtime`` and
``solidx.cli``. vLLM's names (the exports of ``solidx.runtime``) are here, imported lazily so that
``import solidx`` stays light: ``from solidx import LLM, SamplingParams``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_RUNTIME_EXPORTS = ("LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob",
                    "LLMEngine")

__all__ = [*_RUNTIME_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_EXPORTS:
        return getattr(import_module("solidx.runtime"), name)
    raise AttributeError(f"module 'solidx' has no attribute {name!r}")
