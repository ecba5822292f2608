"""KV-cache scales: an fp8 cache (``kv_cache_dtype="fp8"``) stores ``k / k_scale`` and
``v / v_scale`` in e4m3 with the checkpoint's per-layer scales, or 1.0 where it has none."""

from __future__ import annotations

import logging

from torch import nn

from solidx.runtime.config import Config
from solidx.runtime.layers.attention import Attention

logger = logging.getLogger(__name__)


def set_kv_cache_scales(model: nn.Module, config: Config,
                        scales: dict[int, dict[str, float]]) -> None:
    """Give each attention layer (``model.layers.<i>...``) its scales from ``scales[i]``
    (``{"k": .., "v": ..}``). ValueError naming the first layer without them when only some
    layers have scales."""
    layers = {
        int(name.split(".")[2]): module
        for name, module in model.named_modules()
        if isinstance(module, Attention)
    }
    if config.kv_cache_dtype == "auto":
        if scales:
            logger.info("the checkpoint's KV-cache scales are unused: kv_cache_dtype='auto' keeps "
                        "the cache in %s", config.torch_dtype)
        return
    if not scales:
        logger.warning("kv_cache_dtype=%r: the checkpoint has no KV-cache scales, using 1.0",
                       config.kv_cache_dtype)
        return
    for index, attention in sorted(layers.items()):
        layer_scales = scales.get(index, {})
        for kind in ("k", "v"):
            if kind not in layer_scales:
                raise ValueError(
                    f"the checkpoint has KV-cache scales for some layers but not "
                    f"'model.layers.{index}.self_attn.{kind}_scale'"
                )
        attention.k_scale, attention.v_scale = layer_scales["k"], layer_scales["v"]
