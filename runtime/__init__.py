"""solidx's LLM runtime, with vLLM's public names:
``from solidx.runtime import LLM, SamplingParams`` (also re-exported by ``solidx`` itself).

Imported lazily, so ``from solidx.runtime import envs`` stays light and free of import cycles.
Importing it sets up the ``solidx`` logger (``runtime.log_setup``), so that ``LLM(...)`` from
Python logs what the command does.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from solidx.runtime.log_setup import setup_logging

_EXPORTS = {
    "LLM": "solidx.runtime.llm",
    "SamplingParams": "solidx.runtime.sampling_params",
    "RequestOutput": "solidx.runtime.outputs",
    "CompletionOutput": "solidx.runtime.outputs",
    "Logprob": "solidx.runtime.sequence",
    "LLMEngine": "solidx.runtime.engine",
    "Config": "solidx.runtime.config",
}

__all__ = list(_EXPORTS)

setup_logging(strict=False)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'solidx.runtime' has no attribute {name!r}")
