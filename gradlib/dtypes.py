"""Dtype names as the CSV files write them (torch names) and every alias gradlib accepts.

The core is torch-free: dtypes are canonical names (``'torch.float8_e4m3fn'``), with their
element sizes, so the CSV tools (``solidx csv ...``) never import torch. Torch dtypes are looked
up from the names when asked for: :func:`torch_dtype`, :func:`parse_dtype`,
:func:`fp8_dtype_for_arch` and the constant ``FP8`` (``from solidx.gradlib.dtypes import FP8``
imports torch).
"""
from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FP8_NAME = "torch.float8_e4m3fn"
BF16_NAME = "torch.bfloat16"

ITEMSIZES: dict[str, int] = {
    "torch.float8_e4m3fn": 1,
    "torch.float8_e4m3fnuz": 1,
    "torch.float8_e5m2": 1,
    "torch.bfloat16": 2,
    "torch.float16": 2,
    "torch.float32": 4,
}
"""Every dtype gradlib knows, by canonical name, and its element size in bytes."""

FP8_NAMES = ("torch.float8_e4m3fn", "torch.float8_e4m3fnuz", "torch.float8_e5m2")

_ALIASES: dict[str, str] = {
    **{name: name for name in ITEMSIZES},
    "float8_e4m3fn": "torch.float8_e4m3fn",
    "float8_e4m3fnuz": "torch.float8_e4m3fnuz",
    "float8_e5m2": "torch.float8_e5m2",
    "fp8": "torch.float8_e4m3fn",
    "e4m3": "torch.float8_e4m3fn",
    "bfloat16": "torch.bfloat16",
    "bf16": "torch.bfloat16",
    "torch.half": "torch.float16",
    "float16": "torch.float16",
    "half": "torch.float16",
    "fp16": "torch.float16",
    "f16": "torch.float16",
    "float32": "torch.float32",
    "float": "torch.float32",
    "fp32": "torch.float32",
    "f32": "torch.float32",
    "torch.float": "torch.float32",
}


def parse_dtype_name(name: str) -> str:
    """The canonical name of the dtype a CSV cell or flag names; ValueError for an unknown one."""
    key = name.strip()
    canonical = _ALIASES.get(key) or _ALIASES.get(key.lower())
    if canonical is None:
        raise ValueError(f"unknown dtype {name!r}"
                         " (expected e.g. torch.float8_e4m3fn, torch.bfloat16)")
    return canonical


def dtype_name(dtype: torch.dtype | str) -> str:
    """The canonical CSV spelling of a dtype, e.g. 'torch.float8_e4m3fn': a torch dtype's name
    (any torch dtype), or the canonical name of an alias (ValueError for an unknown one)."""
    return parse_dtype_name(dtype) if isinstance(dtype, str) else str(dtype)


@cache
def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a known dtype name or alias (imports torch)."""
    import torch

    return getattr(torch, parse_dtype_name(name).removeprefix("torch."))


def parse_dtype(name: str) -> torch.dtype:
    """Return the torch dtype a CSV cell names; raise ValueError for an unknown name."""
    return torch_dtype(parse_dtype_name(name))


def is_fp8(dtype: torch.dtype | str) -> bool:
    return dtype_name(dtype) in FP8_NAMES


FNUZ_ARCHS = ("gfx940", "gfx941", "gfx942")
"""MI300-class GPUs: their fp8 is the "fnuz" encoding (exponent bias 8, no -0, one NaN 0x80);
gfx950 (MI350) and NVIDIA GPUs use OCP e4m3 (``float8_e4m3fn``)."""


def fp8_dtype_for_arch(arch: str | None) -> torch.dtype:
    """The e4m3 dtype of a GPU architecture (``gcnArchName`` such as ``'gfx942:sramecc+:xnack-'``;
    None for NVIDIA or the CPU)."""
    name = (arch or "").split(":")[0].strip()
    return torch_dtype("torch.float8_e4m3fnuz" if name in FNUZ_ARCHS else FP8_NAME)


def __getattr__(name: str) -> Any:
    if name == "FP8":  # the default operand dtype, as a torch dtype (imports torch)
        return torch_dtype(FP8_NAME)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
