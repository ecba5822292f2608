"""Dtype names as the CSV files write them (torch names) and every alias gradlib accepts."""
from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn

_ALIASES: dict[str, torch.dtype] = {
    "torch.float8_e4m3fn": torch.float8_e4m3fn,
    "torch.float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "torch.float8_e5m2": torch.float8_e5m2,
    "torch.bfloat16": torch.bfloat16,
    "torch.float16": torch.float16,
    "torch.float32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2": torch.float8_e5m2,
    "fp8": torch.float8_e4m3fn,
    "e4m3": torch.float8_e4m3fn,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "torch.half": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "f16": torch.float16,
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "f32": torch.float32,
    "torch.float": torch.float32,
}


def parse_dtype(name: str) -> torch.dtype:
    """Return the torch dtype a CSV cell names; raise ValueError for an unknown name."""
    key = name.strip()
    dtype = _ALIASES.get(key) or _ALIASES.get(key.lower())
    if dtype is None:
        raise ValueError(f"unknown dtype {name!r}"
                         " (expected e.g. torch.float8_e4m3fn, torch.bfloat16)")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical CSV spelling of a dtype: its torch name, e.g. 'torch.float8_e4m3fn'."""
    return str(dtype)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)


FNUZ_ARCHS = ("gfx940", "gfx941", "gfx942")
"""MI300-class GPUs: their fp8 is the "fnuz" encoding (exponent bias 8, no -0, one NaN 0x80);
gfx950 (MI350) and NVIDIA GPUs use OCP e4m3 (``float8_e4m3fn``)."""


def fp8_dtype_for_arch(arch: str | None) -> torch.dtype:
    """The e4m3 dtype of a GPU architecture (``gcnArchName`` such as ``'gfx942:sramecc+:xnack-'``;
    None for NVIDIA or the CPU)."""
    name = (arch or "").split(":")[0].strip()
    return torch.float8_e4m3fnuz if name in FNUZ_ARCHS else torch.float8_e4m3fn
