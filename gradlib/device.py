"""Which device a tuned row belongs to: the name and SM count written in every tuned row."""
from __future__ import annotations

import os
import platform
from typing import NamedTuple

import torch


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
