"""The ``default`` backend's one spec, ``'default:'``; torch-free, so that the CSV tools check
it without loading the backend (:mod:`solidx.gradlib.backends.default`)."""
from __future__ import annotations

from solidx.gradlib.backends.base import parse_spec

SPEC = "default:"


def check_spec(spec: str) -> None:
    """ValueError unless ``spec`` is the default's (libtype ``default``, no fields)."""
    libtype, fields = parse_spec(spec)
    if libtype != "default" or fields:
        raise ValueError(f"not a default spec: {spec!r}")
