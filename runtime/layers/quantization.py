"""Which linear method each layer uses, from ``Config.quantization``."""

from __future__ import annotations

from runtime.config import Config
from runtime.layers.linear import LinearMethodFactory, unquantized


def linear_method_factory(config: Config) -> LinearMethodFactory:
    """The factory the model asks for each linear layer's method (by module name)."""
    if config.quantization is None:
        return unquantized
    raise ValueError(f"quantization={config.quantization!r} is not supported")
