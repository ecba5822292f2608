"""Which device a tuned row belongs to (the name and SM count written in every tuned row), and
the fp8 encoding the device computes with."""
from __future__ import annotations

import os
import platform
from typing import NamedTuple

import torch

from solidx.gradlib.dtypes import fp8_dtype_for_arch


class DeviceIdentity(NamedTuple):
    """``name`` as ``torch.cuda.get_device_name`` gives it (``'cpu'`` on the CPU) and ``sm_count``
    (multiprocessors; logical cores on the CPU)."""

    name: str
    sm_count: int


def device_identity(device: torch.device | str | int | None = None) -> DeviceIdentity:
    device = (torch.device("cuda", device) if isinstance(device, int)
              else torch.device(device or "cpu"))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return DeviceIdentity(props.name, props.multi_processor_count)
    return DeviceIdentity(f"cpu-{platform.machine()}", os.cpu_count() or 1)


def device_fp8_dtype(device: torch.device | str | int | None = None) -> torch.dtype:
    """The e4m3 dtype the device computes with: ``float8_e4m3fnuz`` on MI300-class ROCm GPUs,
    else ``float8_e4m3fn``."""
    device = (torch.device("cuda", device) if isinstance(device, int)
              else torch.device(device or "cpu"))
    if device.type != "cuda" or not torch.version.hip:
        return fp8_dtype_for_arch(None)
    return fp8_dtype_for_arch(getattr(torch.cuda.get_device_properties(device), "gcnArchName", ""))
