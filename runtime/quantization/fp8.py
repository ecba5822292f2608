"""fp8 linear layers (``quantization="fp8"``): e4m3 weights with one scale per tensor, inputs
quantized per tensor (the checkpoint's static scale, or one computed per call). The method only
prepares the operands (the quantized input and the scales); the layer's GEMM dispatch runs them
with the tuned solution for their problem (``runtime.layers.linear``).

Where the weights come from (see ``checkpoint_formats``): a Quark, Quark-"fp8" or AMMO export,
a separate quantized-weights file, or (dynamic) a bf16/fp16/fp32 checkpoint or dummy weights
quantized at load. A linear layer is quantized when its checkpoint weight is stored as fp8;
with no fp8 weight in the checkpoint every decoder linear layer is (the LM head and embeddings
stay in the model dtype). Fused layers (qkv, gate_up) whose parts carry different scales are
requantized at load to one shared scale, the largest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from solidx.gradlib.device import device_fp8_dtype
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.operands import GemmOperands
from solidx.runtime import envs
from solidx.runtime.checkpoint import CheckpointTensor, checkpoint_files
from solidx.runtime.config import Config
from solidx.runtime.layers.linear import (
    LinearMethod,
    UnquantizedLinearMethod,
    set_weight_attrs,
)
from solidx.runtime.models import get_model_class
from solidx.runtime.quantization.checkpoint_formats import (
    CanonicalTensors,
    Fp8Checkpoint,
    fused_parts,
    inspect_checkpoint,
)
from solidx.runtime.quantization.fp8_math import e4m3fn_to_e4m3fnuz, quantize, requantize_shards
from solidx.runtime.quantization.input_quant import InputQuant, QuantizedInput


class Fp8Config:
    """One engine's fp8 state: what the checkpoint holds and which layers are quantized."""

    def __init__(self, config: Config) -> None:
        self.config = config
        cls = get_model_class(config.model_args.architecture)
        self.packed: dict[str, tuple[str, object]] = getattr(cls, "packed_modules_mapping", {})
        self.checkpoint = _inspect(config)
        self.static_modules: set[str] = set()
        self.fp8_dtype = device_fp8_dtype(config.torch_device)

    @property
    def kv_scales(self) -> dict[int, dict[str, float]]:
        """Per decoder layer, the checkpoint's KV-cache scales (``{"k": .., "v": ..}``)."""
        return self.checkpoint.kv_scales if self.checkpoint else {}

    def linear_method(self, prefix: str) -> LinearMethod:
        """The method of the linear layer ``prefix`` (a fused layer: all its parts agree)."""
        stored = self.checkpoint.fp8_modules if self.checkpoint else frozenset()
        if not stored:
            return Fp8LinearMethod(serialized=False, static_input=False, fp8_dtype=self.fp8_dtype)
        parts = fused_parts(prefix, self.packed)
        fp8_parts = [part for part in parts if part in stored]
        if not fp8_parts:
            return UnquantizedLinearMethod()
        if len(fp8_parts) != len(parts):
            others = sorted(set(parts) - set(fp8_parts))
            raise ValueError(
                f"{prefix} fuses {', '.join(parts)}, but {', '.join(others)} "
                f"{'is' if len(others) == 1 else 'are'} not stored as fp8: a fused layer is "
                "quantized whole (exclude all of its parts or none)"
            )
        self.static_modules.update(parts)
        return Fp8LinearMethod(serialized=True, static_input=self.checkpoint.static_input,
                               fp8_dtype=self.fp8_dtype)

    def checkpoint_tensors(self, tensors: Iterable[CheckpointTensor]) -> Iterator[CheckpointTensor]:
        """The checkpoint's tensors in canonical form (after the model is built)."""
        if self.checkpoint is None:
            return iter(tensors)
        return CanonicalTensors(
            self.checkpoint, self.config.model_args, self.config.torch_dtype, self.static_modules
        )(tensors)


def _inspect(config: Config) -> Fp8Checkpoint | None:
    """The checkpoint's description, or None for dummy weights."""
    if config.load_format == "dummy":
        if config.quantization_param_path:
            raise ValueError("quantization_param_path needs a checkpoint, not load_format='dummy'")
        return None
    folder = Path(config.model)
    side = None
    if config.quantization_param_path:
        side = folder / config.quantization_param_path
        if not side.is_file():
            raise FileNotFoundError(
                f"quantization_param_path {config.quantization_param_path!r}: no file {side} "
                "(the path is relative to the model folder)"
            )
    files = [f for f in checkpoint_files(folder) if side is None or f.resolve() != side.resolve()]
    return inspect_checkpoint(config.hf_config, files, side, envs.VLLM_FP8_USE_AMMO)


class Fp8LinearMethod(LinearMethod):
    """``y = (x_q · sx) @ (W_q · sw)ᵀ + b`` with e4m3 ``x_q`` and ``W_q`` and 0-d float32 scales.

    ``serialized``: the checkpoint stores the weight as fp8 with ``weight_scale`` (one per fused
    part, unified at load); else the weight loads in the model dtype and is quantized at load.
    ``static_input``: ``input_scale`` comes from the checkpoint; else it is computed per call.
    ``operands`` quantizes the input (capturable in a CUDA graph) unless the kernel before the
    layer did, as ``input_quant`` says.
    ``fp8_dtype``: the e4m3 encoding the device computes with. On fnuz hardware (MI300-class) an
    e4m3fn checkpoint is converted at load as ROCm's vLLM does (``e4m3fn_to_e4m3fnuz``: bits
    reinterpreted, scales doubled) and inputs are quantized to fnuz.
    """

    def __init__(self, serialized: bool, static_input: bool,
                 fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> None:
        self.serialized = serialized
        self.static_input = static_input
        self.fp8_dtype = fp8_dtype

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype
    ) -> None:
        dtype = FP8 if self.serialized else params_dtype
        weight = nn.Parameter(
            torch.empty(sum(output_sizes), input_size, dtype=dtype), requires_grad=False
        )
        set_weight_attrs(weight, {"output_dim": 0, "input_dim": 1})
        layer.register_parameter("weight", weight)
        if self.serialized:
            layer.register_parameter("weight_scale", _scale_parameter(len(output_sizes)))
            if self.static_input:
                layer.register_parameter("input_scale", _scale_parameter(len(output_sizes)))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if not self.serialized:
            weight, scale = quantize(layer.weight.data, dtype=self.fp8_dtype)
        else:
            weight, scales = layer.weight.data, layer.weight_scale.data
            if bool((scales == scales[0]).all()):
                scale = scales[0].clone()
            else:
                shards = list(weight.split(layer.output_sizes))
                weight, scale = requantize_shards(shards, list(scales))
            input_scale = layer.input_scale.data.max() if self.static_input else None
            if self.fp8_dtype == torch.float8_e4m3fnuz and weight.dtype == torch.float8_e4m3fn:
                weight, scale, input_scale = e4m3fn_to_e4m3fnuz(weight, scale, input_scale)
            if input_scale is not None:
                layer.input_scale = _parameter(input_scale)
        layer.weight = _parameter(weight)
        layer.weight_scale = _parameter(scale)

    def input_quant(self, layer: nn.Module) -> InputQuant:
        return InputQuant(layer.input_scale if self.static_input else None, self.fp8_dtype)

    def operands(
        self, layer: nn.Module, x: torch.Tensor | QuantizedInput, bias: torch.Tensor | None
    ) -> GemmOperands:
        if not isinstance(x, QuantizedInput):
            x = self.input_quant(layer).quantize(x)
        return GemmOperands(x.q, layer.weight, x.scale, layer.weight_scale, bias)


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def _scale_parameter(parts: int) -> nn.Parameter:
    """One float32 scale per fused part, filled by shard (``q``/``k``/``v``, 0/1, or None: all)."""
    param = _parameter(torch.empty(parts, dtype=torch.float32))
    param.weight_loader = _load_scale
    return param


def _load_scale(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
    if loaded.numel() != 1:
        raise ValueError(f"has shape {tuple(loaded.shape)}, expected a per-tensor scale")
    if shard_id is None:
        param.data.copy_(loaded.reshape(()).expand(param.shape))
    else:
        index = "qkv".index(shard_id) if isinstance(shard_id, str) else int(shard_id)
        param.data[index].copy_(loaded.reshape(()))
