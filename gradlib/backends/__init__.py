"""Registry of solution backends by libtype, imported lazily (cuBLASLt and Triton load heavy
libraries). ``LIBTYPES`` lists every libtype a tuned CSV may name."""
from __future__ import annotations

import importlib
from functools import cache

from solidx.gradlib.backends.base import Backend, Solution, parse_spec

_BACKENDS: dict[str, tuple[str, str]] = {
    "default": ("solidx.gradlib.backends.default", "DefaultBackend"),
    "cublaslt": ("solidx.gradlib.backends.cublaslt", "CublasLtBackend"),
    "triton": ("solidx.gradlib.backends.triton", "TritonBackend"),
    "hipblaslt": ("solidx.gradlib.backends.hipblaslt", "HipBlasLtBackend"),
    "rocblas": ("solidx.gradlib.backends.rocblas", "RocBlasBackend"),
}

LIBTYPES: tuple[str, ...] = tuple(_BACKENDS)


@cache
def get_backend(libtype: str) -> Backend:
    """The backend for a libtype; ValueError for an unknown one, with the known ones."""
    if libtype not in _BACKENDS:
        raise ValueError(f"unknown libtype {libtype!r} (known: {', '.join(LIBTYPES)})")
    module_name, class_name = _BACKENDS[libtype]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ValueError(f"backend {libtype!r} is not implemented in this build") from exc
    return getattr(module, class_name)()


def solution_from_spec(spec: str, problem) -> Solution:
    """Rebuild a solution from its spec string (``'<libtype>:k=v,...'``)."""
    libtype, _ = parse_spec(spec)
    return get_backend(libtype).from_spec(spec, problem)


__all__ = ["Backend", "Solution", "LIBTYPES", "get_backend", "solution_from_spec"]
