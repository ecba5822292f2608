"""Finding and loading an Lt library (cuBLASLt or hipBLASLt; rocBLAS uses the search helpers too)
through ctypes, binding the shared prototypes of :mod:`~solidx.gradlib.backends.lt_vendor`, and
status checking.

Nothing here launches work: :mod:`~solidx.gradlib.backends.lt_plan` makes the calls.
"""
from __future__ import annotations

import ctypes
import glob
import os

import torch

from solidx.gradlib.backends.lt_vendor import STATUS_SUCCESS, LtVendor


def mapped_paths(maps_text: str, name: str) -> list[str]:
    """Paths of the libraries named like ``name`` in a ``/proc/self/maps`` text."""
    return [line.split(maxsplit=5)[-1].strip() for line in maps_text.splitlines()
            if name in line and len(line.split(maxsplit=5)) == 6]


def globbed(dirs: list[str], pattern: str) -> list[str]:
    """Every file matching ``pattern`` in each of ``dirs``, in order."""
    return [path for base in dirs for path in sorted(glob.glob(os.path.join(base, pattern)))]


def rocm_home() -> str | None:
    """The ROCm install as torch resolves it (``ROCM_HOME``, ``ROCM_PATH``, hipcc's), or None."""
    from torch.utils.cpp_extension import ROCM_HOME  # heavy: imported only when searching

    return ROCM_HOME


def torch_lib_dir() -> str:
    """torch's bundled libraries (a ROCm wheel carries libhipblaslt and librocblas there)."""
    return os.path.join(os.path.dirname(torch.__file__), "lib")


def maps_text() -> str:
    try:
        with open("/proc/self/maps") as f:
            return f.read()
    except OSError:
        return ""


def bind(lib: ctypes.CDLL, signatures: dict[str, list]) -> ctypes.CDLL:
    """Set ``argtypes`` and an int ``restype`` (the status) on every named symbol; AttributeError
    names a symbol the library lacks."""
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return lib


def load_first(candidates: list[str], signatures: dict[str, list],
               what: str) -> tuple[ctypes.CDLL | None, str]:
    """``(library, path)`` of the first candidate that loads and has every symbol, or
    ``(None, why)`` naming each failure."""
    errors = []
    for path in dict.fromkeys(candidates):
        try:
            return bind(ctypes.CDLL(path), signatures), path
        except (OSError, AttributeError) as exc:
            errors.append(f"{path}: {exc}")
    return None, f"cannot load {what}: " + ("; ".join(errors) or "no candidate found")


def check(vendor: LtVendor, status: int, what: str) -> None:
    """Raise RuntimeError naming the call and the status unless it succeeded."""
    if status != STATUS_SUCCESS:
        raise RuntimeError(f"{what} failed: {vendor.status_name(status)}")


def call(vendor: LtVendor, lib: ctypes.CDLL, name: str, *args: object) -> None:
    """Call ``lib.<prefix><name>(*args)`` and :func:`check` its status."""
    symbol = vendor.prefix + name
    check(vendor, getattr(lib, symbol)(*args), symbol)
