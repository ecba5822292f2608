"""What the ``hipblaslt`` and ``rocblas`` backends share: a ROCm library loaded through ctypes
(found by the backend's own ``load``, or the ``library=`` path of a stand-in), run on the current
GPU, or on host pointers (``device="cpu"``, only with a stand-in library)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from solidx.gradlib.backends.base import Backend


class RocmLibraryBackend(Backend):
    """A backend over one ROCm library; a subclass sets ``load = staticmethod(its loader)``
    (path or None -> (the library or None, why not))."""

    load: Callable[[str | None], tuple[ctypes.CDLL | None, str]]

    def __init__(self, library: str | None = None, device: str | None = None) -> None:
        if device not in (None, "cpu"):
            raise ValueError(f"device must be None (the current GPU) or 'cpu', not {device!r}")
        if device == "cpu" and library is None:
            raise ValueError("device='cpu' runs host pointers: only with an explicit stand-in "
                             "library=")
        self.library, self.host = library, device == "cpu"

    def available(self) -> tuple[bool, str]:
        if not self.host:
            if not torch.version.hip:
                return False, "not a ROCm build of torch (torch.version.hip is None)"
            if not torch.cuda.is_available():
                return False, "no ROCm GPU (torch.cuda.is_available() is False)"
        lib, why = self.load(self.library)
        return (True, "") if lib is not None else (False, why)

    def _lib(self) -> ctypes.CDLL:
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"{self.libtype} backend unavailable: {why}")
        return self.load(self.library)[0]

    def _device(self) -> torch.device:
        return torch.device("cpu") if self.host else torch.device(
            "cuda", torch.cuda.current_device())
