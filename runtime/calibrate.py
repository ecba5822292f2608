"""``solidx quantize``: a Quark-format fp8 checkpoint from a bf16/fp16/fp32 one.

On the runtime's top floor beside the :class:`~solidx.runtime.llm.LLM` it drives: it imports the
engine, the layers and the loader; none of them imports it.

Calibration runs the unquantized model (solidx's engine, eager) over prompts with forward hooks
that keep the largest ``|x|`` entering every linear layer and the largest ``|k|`` and ``|v|``
every attention layer writes to its KV cache. Each scale is that maximum over 448 (the e4m3
range). Weights are quantized per tensor, q/k/v and gate/up each on its own, as Quark exports
them (the loader requantizes fused parts to one scale).

The output folder holds ``model.safetensors`` with, per decoder linear layer, ``weight``
(float8_e4m3fn), ``weight_scale`` and ``input_scale`` (0-d float32), ``output_scale`` on
``k_proj`` / ``v_proj`` (the KV-cache scales); every other tensor as it was; ``config.json``
with a Quark ``quantization_config`` (fp8_e4m3 per_tensor weights and inputs, static,
``lm_head`` excluded, KV cache group ``*k_proj``, ``*v_proj``); the other files copied.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from solidx.runtime.layers.attention import Attention
from solidx.runtime.layers.linear import LinearBase
from solidx.runtime.llm import LLM
from solidx.runtime.checkpoint import checkpoint_tensors
from solidx.runtime.quantization.checkpoint_formats import fused_parts
from solidx.runtime.quantization.fp8_math import FP8_MAX, quantize
from solidx.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "The history of the printing press begins in the fifteenth century, when",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Photosynthesis converts light energy into chemical energy stored in glucose, and",
    "Dear team, thank you all for the hard work on the release. Next quarter we will",
    "The capital of France is Paris. The capital of Japan is Tokyo. The capital of",
    "In 1969, the Apollo 11 mission landed the first humans on the Moon; Neil Armstrong",
    "SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY",
    "Once upon a time, in a village at the edge of a great forest, there lived",
)
FP8_SPEC = {
    "dtype": "fp8_e4m3",
    "qscheme": "per_tensor",
    "is_dynamic": False,
    "symmetric": True,
    "round_method": "half_even",
    "scale_type": "float",
    "ch_axis": None,
    "group_size": None,
    "observer_cls": "PerTensorMinMaxObserver",
}
KV_GROUP = ["*k_proj", "*v_proj"]
Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]


@dataclass
class Calibration:
    """Largest ``|x|`` seen per checkpoint module (``model.layers.0.self_attn.q_proj``) and per
    decoder layer's keys and values (``{i: {"k": .., "v": ..}}``)."""

    inputs: dict[str, float] = field(default_factory=dict)
    kv: dict[int, dict[str, float]] = field(default_factory=dict)


def calibrate(model: str, prompts: list[Any], **engine_kwargs: Any) -> Calibration:
    """Run ``model`` (unquantized, eager) over ``prompts`` and record the maxima."""
    llm = LLM(model, enforce_eager=True, **engine_kwargs)
    network = llm.llm_engine.model_runner.model
    maxima: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(_max_hook(maxima, name))
        for name, module in network.named_modules()
        if isinstance(module, (LinearBase, Attention))
    ]
    try:
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    finally:
        for handle in handles:
            handle.remove()
    refused = [out.error for out in outputs if out.error]
    if len(refused) == len(outputs):
        raise ValueError(f"no calibration prompt could run: {refused[0]}")
    if refused:
        logger.warning("%d calibration prompts were refused, e.g.: %s", len(refused), refused[0])
    packed = getattr(network, "packed_modules_mapping", {})
    result = Calibration()
    for name, value in maxima.items():
        prefix, _, kind = name.rpartition(":")
        if kind == "x":
            for part in fused_parts(prefix, packed):
                result.inputs[part] = float(value)
        else:
            result.kv.setdefault(int(prefix.split(".")[2]), {})[kind] = float(value)
    del llm, network
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _max_hook(maxima: dict[str, torch.Tensor], name: str) -> Hook:
    """A forward hook that keeps in ``maxima`` the largest ``|x|`` entering the linear layer
    ``name`` (key ``name:x``), or the ``|k|`` and ``|v|`` an attention layer writes
    (``name:k``, ``name:v``)."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        named = [("x", inputs[0])] if isinstance(module, LinearBase) else [
            ("k", inputs[1]), ("v", inputs[2])
        ]
        for kind, tensor in named:
            key = f"{name}:{kind}"
            peak = tensor.detach().abs().amax().float()
            maxima[key] = peak if key not in maxima else torch.maximum(maxima[key], peak)
    return hook


def write_quark_checkpoint(model: str, output: str, calibration: Calibration) -> Path:
    """Write the fp8 checkpoint of ``model`` (a folder) to ``output`` (created; must be empty)."""
    source, target = Path(model), Path(output)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"output folder {target} is not empty")
    target.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor, _ in checkpoint_tensors(source):
        module, _, leaf = name.rpartition(".")
        if module not in calibration.inputs:
            tensors[name] = tensor.contiguous()
            continue
        if leaf == "weight":
            weight, scale = quantize(tensor)
            tensors[name], tensors[f"{module}.weight_scale"] = weight, scale
            tensors[f"{module}.input_scale"] = _scale(calibration.inputs[module])
            layer, proj = module.split(".")[2], module.rsplit(".", 1)[1]
            if proj in ("k_proj", "v_proj"):
                kv_max = calibration.kv.get(int(layer), {}).get(proj[0], 0.0)
                tensors[f"{module}.output_scale"] = _scale(kv_max)
        else:
            tensors[name] = tensor.contiguous()
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name not in (
            "config.json", "model.safetensors.index.json"
        ):
            shutil.copy2(path, target / path.name)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = quark_config()
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return target


def _scale(maximum: float) -> torch.Tensor:
    return torch.tensor(max(maximum / FP8_MAX, 1e-12), dtype=torch.float32)


def quark_config() -> dict[str, Any]:
    """The ``quantization_config`` of a checkpoint written by :func:`write_quark_checkpoint`."""
    kv_layer = {"weight": FP8_SPEC, "input_tensors": FP8_SPEC, "output_tensors": FP8_SPEC,
                "bias": None}
    return {
        "quant_method": "quark",
        "quant_mode": "eager_mode",
        "global_quant_config": {
            "weight": FP8_SPEC,
            "input_tensors": FP8_SPEC,
            "output_tensors": None,
            "bias": None,
            "target_device": None,
        },
        "layer_quant_config": {group: kv_layer for group in KV_GROUP},
        "layer_type_quant_config": {},
        "kv_cache_quant_config": {group: kv_layer for group in KV_GROUP},
        "exclude": ["lm_head"],
        "algo_config": None,
        "export": {
            "kv_cache_group": KV_GROUP,
            "min_kv_scale": 0.0,
            "pack_method": "reorder",
            "weight_format": "real_quantized",
            "weight_merge_groups": None,
        },
    }


def quantize_checkpoint(
    model: str, output: str, prompts: list[Any] | None = None, **engine_kwargs: Any
) -> Path:
    """Calibrate ``model`` on ``prompts`` (default: :data:`DEFAULT_PROMPTS`) and write its
    Quark fp8 checkpoint to ``output``."""
    if not Path(model, "config.json").is_file():
        raise FileNotFoundError(f"{model!r} is not a checkpoint folder (no config.json)")
    if (json.loads(Path(model, "config.json").read_text()).get("quantization_config")):
        raise ValueError(f"{model} is already quantized (config.json has a quantization_config)")
    calibration = calibrate(model, list(prompts or DEFAULT_PROMPTS), **engine_kwargs)
    return write_quark_checkpoint(model, output, calibration)
