"""Which quantization method an engine uses, from ``Config.quantization``."""

from __future__ import annotations

import logging

from solidx.runtime import envs
from solidx.runtime.config import Config
from solidx.runtime.quantization.fp8 import Fp8Config

logger = logging.getLogger(__name__)


def get_quantization(config: Config) -> Fp8Config | None:
    """The engine's quantization state (it gives each linear layer its method, adapts the
    checkpoint's tensors and holds the KV-cache scales), or None for unquantized models."""
    if config.quantization == "fp8":
        return Fp8Config(config)
    if config.quantization is not None:
        raise ValueError(f"quantization={config.quantization!r} is not supported")
    if envs.TUNE_FP8:
        logger.warning("TUNE_FP8=1 records fp8 GEMMs, and this model has none "
                       "(pass quantization='fp8')")
    return None
