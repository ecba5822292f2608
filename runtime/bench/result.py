"""What every benchmark of the runtime returns, and the lines its summaries share.

``solidx bench latency|throughput|attention`` hand their result to the CLI's ``report``, which
prints :meth:`BenchResult.summary` and saves :meth:`BenchResult.as_dict` as JSON, and needs
nothing else of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class BenchResult(ABC):
    """A benchmark's figures (subclasses are dataclasses of them)."""

    @abstractmethod
    def summary(self) -> str:
        """Lines for the terminal: what ran where, and the figures that matter."""

    @abstractmethod
    def as_dict(self) -> dict[str, Any]:
        """Every figure, derived ones included, as values ``json.dump`` takes."""


def device_name(device: torch.device) -> str:
    """The card's name as ``torch.cuda.get_device_name`` gives it; ``'cpu'`` off CUDA."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def tuned_gemm_line(report: dict[str, Any]) -> str:
    """Summary lines of ``gradlib.tuned.TunedGemms.report``: hits and misses, then by kind."""
    kinds = ", ".join(f"{kind} {n['hits']}/{n['hits'] + n['misses']}"
                      for kind, n in report.get("by_kind", {}).items())
    return (
        f"  tuned GEMMs ({report['tuned_file']}): {report['problems_tuned']} problems tuned "
        f"(hits), {report['problems_default']} with the default solution (misses)"
        + (f"\n  hits/problems by layer kind: {kinds}" if kinds else "")
    )
