"""The engine's GEMM set-up: the tuned file, loaded once and handed to every linear layer, and
shape capture (``TUNE_FP8=1`` for fp8 GEMMs, ROCm's ``VLLM_TUNE_GEMM=1`` for 16-bit ones).

Which tuned file: ``tuned_gemm`` (``--tuned-gemm``), else ``SOLIDX_TUNED_GEMM``, else
``VLLM_TUNE_FILE``: an explicit file must exist and be well formed. With none of them, ROCm's
defaults are loaded where they exist (``/tmp/tuned_fp8_16.csv`` for fp8, ``tuned.csv`` for
16-bit; a malformed default, a link, another user's file or one writable by others is ignored
with a warning). One file may hold fp8 and 16-bit rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from solidx.gradlib.dtypes import FP8
from solidx.gradlib.safe_files import untrusted_reason
from solidx.gradlib.schema import CsvError
from solidx.gradlib.tuned import TunedGemms
from solidx.runtime import envs
from solidx.runtime.config import Config
from solidx.shape_capture.recorder import start_recording

logger = logging.getLogger(__name__)

ROCM_TUNED_FILE = "/tmp/tuned_fp8_16.csv"
"""ROCm's default fp8 tuned file."""
ROCM_TUNE_FILE = "tuned.csv"
"""ROCm's default 16-bit tuned file (``VLLM_TUNE_FILE`` unset)."""
SIXTEEN_BIT = frozenset({torch.bfloat16, torch.float16})


def load_tuned_gemms(config: Config) -> TunedGemms:
    """The tuned solutions for this engine's device (see the module docstring for the file).
    Raises FileNotFoundError for a missing explicit file, CsvError for a malformed one."""
    explicit = config.tuned_gemm or envs.SOLIDX_TUNED_GEMM or envs.VLLM_TUNE_FILE
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"tuned GEMM file {explicit!r} (tuned_gemm / "
                                    "SOLIDX_TUNED_GEMM / VLLM_TUNE_FILE) does not exist")
        return TunedGemms.load(explicit, config.torch_device)
    defaults = []
    for path in (ROCM_TUNED_FILE, ROCM_TUNE_FILE):
        untrusted = untrusted_reason(path)
        if untrusted:  # anyone may write into /tmp: a default file must be this user's own
            logger.warning("ignoring the default tuned GEMM file: %s; pass your own file with "
                           "--tuned-gemm (SOLIDX_TUNED_GEMM) to use it", untrusted)
        elif Path(path).is_file():
            defaults.append(path)
    if defaults:
        try:
            return TunedGemms.load(defaults, config.torch_device)
        except CsvError as exc:
            logger.warning("ignoring the default tuned GEMM file: %s", exc)
    logger.info("GEMMs: no tuned file, every GEMM runs with the default solution")
    return TunedGemms()


def start_gemm_capture() -> None:
    """Turn on the shape capture the environment asks for (both may be on at once)."""
    if envs.TUNE_FP8:
        start_recording(envs.SOLIDX_SHAPES_FILE, dtypes=frozenset({FP8}))
        logger.info("TUNE_FP8: recording fp8 GEMM problems to %s", envs.SOLIDX_SHAPES_FILE)
    if envs.VLLM_TUNE_GEMM:
        start_recording(envs.VLLM_UNTUNE_FILE, dtypes=SIXTEEN_BIT)
        logger.info("VLLM_TUNE_GEMM: recording 16-bit GEMM problems to %s",
                    envs.VLLM_UNTUNE_FILE)
