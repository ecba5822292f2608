"""Recording the GEMM shapes a model runs, and deriving them from a model's config."""
from solidx.shape_capture.from_config import problems_from_config
from solidx.shape_capture.recorder import (
    active_recorder,
    record_linears,
    recording,
    start_recording,
)

__all__ = [
    "active_recorder",
    "problems_from_config",
    "record_linears",
    "recording",
    "start_recording",
]
