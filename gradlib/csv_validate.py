"""Every error in a shapes or tuned file, whichever of the two it is."""
from __future__ import annotations

import os

from solidx.gradlib.schema import CsvError, is_tuned_file
from solidx.gradlib.shapes_file import parse_shapes
from solidx.gradlib.tuned_file import parse_tuned


def validate(path: str | os.PathLike) -> list[CsvError]:
    """Every error in a shapes or tuned file (empty when the file is good)."""
    try:
        if is_tuned_file(path):
            return parse_tuned(path)[1]
        return parse_shapes(path)[1]
    except CsvError as exc:
        return [exc]


__all__ = ["validate"]
