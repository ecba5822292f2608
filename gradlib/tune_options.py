"""How to tune: :class:`TuneOptions`, the settings of one run of :mod:`solidx.gradlib.tuner`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from solidx.gradlib.timing import TimingConfig

ALL_BACKENDS = ("cublaslt", "hipblaslt", "rocblas", "triton")  # unavailable ones are skipped


@dataclass(frozen=True)
class TuneOptions:
    """How to tune. ``backends`` are tried besides ``default`` (unavailable ones are reported
    and skipped); ``max_candidates`` bounds each backend's list per problem; ``finalists`` is
    how many screened candidates are re-timed against the default. ``rocblas_margin`` is
    gradlib's preference rule: a rocBLAS finalist beats the fastest hipBLASLt one only if it is
    at least that much faster (0.005: 0.5%)."""

    backends: tuple[str, ...] = ALL_BACKENDS
    margin: float = 0.03
    rocblas_margin: float = 0.005
    gpus: tuple[int, ...] | None = None
    max_candidates: int | None = None
    finalists: int = 4
    timing: TimingConfig = field(default_factory=TimingConfig)
    candidate_timeout_s: float = 120.0
    log_file: str | None = None
    progress: bool = True
    backend_overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if not 0 <= self.rocblas_margin < 1:
            raise ValueError(f"rocblas_margin must be in [0, 1), got {self.rocblas_margin}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates must be ≥ 1, got {self.max_candidates}")
        if self.finalists < 1:
            raise ValueError(f"finalists must be ≥ 1, got {self.finalists}")
        if "default" in self.backends:
            raise ValueError("'default' is always timed: list only the other backends")
        if self.gpus is not None and len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus names a GPU twice: {self.gpus}")
