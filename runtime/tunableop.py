"""PyTorch TunableOp for the engine's 16-bit GEMMs (``PYTORCH_TUNABLEOP_ENABLED=1``).

The unquantized linear layers and the LM head call ``F.linear``, which on a GPU runs through
``at::cuda::blas::gemm``: with TunableOp on, PyTorch times every candidate of each new GEMM shape
(hipBLASLt and rocBLAS on ROCm, cuBLAS and cuBLASLt on CUDA) and keeps the fastest. With
``PYTORCH_TUNABLEOP_TUNING=0`` it uses the results it has and tunes nothing new (PyTorch's
meaning; the ROCm docs print ``=1`` there by mistake).

Results live in ``PYTORCH_TUNABLEOP_FILENAME`` with the GPU's ordinal in place of ``%d`` (or
before the extension): one file per rank (``tunableop_results0.csv``, ``...1.csv``), read at the
first GEMM and written as results come (PyTorch versions with ``write_file``: at exit). On the
CPU there is no TunableOp and nothing to do.
"""

from __future__ import annotations

import atexit
import logging

import torch

from solidx.runtime import envs

logger = logging.getLogger(__name__)


def configure_tunableop(device: torch.device) -> str | None:
    """Apply the ``PYTORCH_TUNABLEOP_*`` settings for the GPU ``device`` (call before its first
    GEMM, once it is the current device's rank); return the results file, or None when TunableOp
    is off or ``device`` is no GPU."""
    if device.type != "cuda" or not envs.PYTORCH_TUNABLEOP_ENABLED:
        return None
    tunable = torch.cuda.tunable
    with torch.cuda.device(device):
        tunable.set_filename(envs.PYTORCH_TUNABLEOP_FILENAME, insert_device_ordinal=True)
    tuning = envs.PYTORCH_TUNABLEOP_TUNING
    tunable.tuning_enable(tuning)
    tunable.enable(True)
    write_file = getattr(tunable, "write_file", None)
    if tuning and write_file is not None:
        atexit.register(write_file)
    filename = tunable.get_filename()
    logger.info(
        "TunableOp on (%s) for %s, results in %s",
        "tuning new GEMM shapes" if tuning else "tuned results only",
        device,
        filename,
    )
    return filename
