"""What the tuner's worker child answers (:mod:`solidx.gradlib.worker_child`) and the parent's
handle returns (:class:`solidx.gradlib.worker.Worker`): plain frozen dataclasses, pickled over
the pipe.

* the child's hello → :class:`Hello` (device, torch version, a :class:`BackendInfo` per backend);
* ``setup(problem)`` → :class:`Setup`;
* ``screen(spec)`` → :class:`Outcome`;
* ``final(specs)`` → ``{spec: Timing}``, the default under :data:`DEFAULT_SPEC`.
"""
from __future__ import annotations

from dataclasses import dataclass

from solidx.gradlib.timing import Timing

DEFAULT_SPEC = "default:"


@dataclass(frozen=True)
class BackendInfo:
    available: bool
    reason: str = ""
    version: str | None = None


@dataclass(frozen=True)
class Hello:
    """What a fresh child reports: the device it runs on and every backend it can load."""

    device: str
    sm_count: int
    torch_version: str
    backends: dict[str, BackendInfo]


@dataclass(frozen=True)
class Setup:
    default: Timing
    default_err: float
    tolerance: float
    launches: int
    copies: int


@dataclass(frozen=True)
class Outcome:
    """One candidate's screening: accepted with a timing, or rejected with the reason."""

    spec: str
    ok: bool
    timing: Timing | None = None
    max_rel_err: float = float("nan")
    reason: str = ""

    @classmethod
    def rejected(cls, spec: str, reason: str, err: float = float("nan")) -> Outcome:
        return cls(spec, False, None, err, reason)
