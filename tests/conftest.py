"""Test set-up: Triton runs under its interpreter where there is no GPU; ``@pytest.mark.gpu``
tests are skipped without CUDA (run them on the device with ``python -m pytest -m gpu``)."""
from __future__ import annotations

import os
import shutil

if not shutil.which("nvidia-smi") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
