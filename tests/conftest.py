"""Test set-up: Triton runs under its interpreter where there is no GPU; ``@pytest.mark.gpu``
tests are skipped without CUDA (run them on the device with ``python -m pytest -m gpu``)."""
from __future__ import annotations

import os
import shutil

if not shutil.which("nvidia-smi") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# CI machines have 2 cores shared with the Triton interpreter and child processes: one intra-op
# thread per process avoids oversubscription (measured 20x slower decode with 2 on a busy machine).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
