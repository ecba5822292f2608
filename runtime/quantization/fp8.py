"""fp8 linear layers (``quantization="fp8"``): e4m3 weights with one scale per tensor, inputs
quantized per tensor (the checkpoint's static scale, or one computed per call), every GEMM run
with the tuned solution for its problem.

Where the weights come from (see ``checkpoint_formats``): a Quark, Quark-"fp8" or AMMO export,
a separate quantized-weights file, or (dynamic) a bf16/fp16/fp32 checkpoint or dummy weights
quantized at load. A linear layer is quantized when its checkpoint weight is stored as fp8;
with no fp8 weight in the checkpoint every decoder linear layer is (the LM head and embeddings
stay in the model dtype). Fused layers (qkv, gate_up) whose parts carry different scales are
requantized at load to one shared scale, the largest.

The tuned file (``tuned_gemm``, else ``SOLIDX_TUNED_GEMM``, else ROCm's ``/tmp/tuned_fp8_16.csv``
when it exists) is loaded once at startup; a call costs a dict lookup. ``TUNE_FP8=1`` records
every fp8 GEMM the engine issues into ``SOLIDX_SHAPES_FILE`` (written at exit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from solidx.gradlib.dtypes import FP8
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import untrusted_reason
from solidx.gradlib.schema import CsvError
from solidx.gradlib.tuned import TunedGemms
from solidx.runtime import envs
from solidx.runtime.checkpoint import CheckpointTensor, checkpoint_files
from solidx.runtime.config import Config
from solidx.runtime.layers.linear import (
    LinearBase,
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
from solidx.runtime.quantization.fp8_math import quantize, requantize_shards
from solidx.runtime.quantization.input_quant import quantize_input
from solidx.shape_capture.recorder import start_recording

logger = logging.getLogger(__name__)

ROCM_TUNED_FILE = "/tmp/tuned_fp8_16.csv"


def load_tuned_gemms(config: Config) -> TunedGemms:
    """The tuned solutions for this engine's device. An explicit file (``tuned_gemm`` or
    ``SOLIDX_TUNED_GEMM``) must exist and be well formed (FileNotFoundError / CsvError); ROCm's
    default file is used when it exists, and ignored with a warning when it is malformed, a
    link, another user's or writable by others (anyone may write into /tmp)."""
    explicit = config.tuned_gemm or envs.SOLIDX_TUNED_GEMM
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(
                f"tuned GEMM file {explicit!r} (tuned_gemm / SOLIDX_TUNED_GEMM) does not exist"
            )
        return TunedGemms.load(explicit, config.torch_device)
    untrusted = untrusted_reason(ROCM_TUNED_FILE)
    if untrusted:
        logger.warning("ignoring the default tuned GEMM file: %s; pass your own file with "
                       "--tuned-gemm (SOLIDX_TUNED_GEMM) to use it", untrusted)
    elif Path(ROCM_TUNED_FILE).is_file():
        try:
            return TunedGemms.load(ROCM_TUNED_FILE, config.torch_device)
        except CsvError as exc:
            logger.warning("ignoring the default tuned GEMM file: %s", exc)
    logger.info("fp8 GEMMs: no tuned file, every GEMM runs with the default solution")
    return TunedGemms()


class Fp8Config:
    """One engine's fp8 state: what the checkpoint holds, the tuned solutions, and which
    solution each problem the engine issued ran with (``report()``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        cls = get_model_class(config.model_args.architecture)
        self.packed: dict[str, tuple[str, object]] = getattr(cls, "packed_modules_mapping", {})
        self.checkpoint = _inspect(config)
        self.tuned = load_tuned_gemms(config)
        self.static_modules: set[str] = set()
        self.problems: dict[GemmProblem, str] = {}  # problem -> libtype it ran with
        if envs.TUNE_FP8:
            start_recording(envs.SOLIDX_SHAPES_FILE, dtypes=frozenset({FP8}))
            logger.info("TUNE_FP8: recording fp8 GEMM problems to %s", envs.SOLIDX_SHAPES_FILE)

    @property
    def kv_scales(self) -> dict[int, dict[str, float]]:
        """Per decoder layer, the checkpoint's KV-cache scales (``{"k": .., "v": ..}``)."""
        return self.checkpoint.kv_scales if self.checkpoint else {}

    def linear_method(self, prefix: str) -> LinearMethod:
        """The method of the linear layer ``prefix`` (a fused layer: all its parts agree)."""
        stored = self.checkpoint.fp8_modules if self.checkpoint else frozenset()
        if not stored:
            return Fp8LinearMethod(self, serialized=False, static_input=False)
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
        return Fp8LinearMethod(self, serialized=True, static_input=self.checkpoint.static_input)

    def checkpoint_tensors(self, tensors: Iterable[CheckpointTensor]) -> Iterator[CheckpointTensor]:
        """The checkpoint's tensors in canonical form (after the model is built)."""
        if self.checkpoint is None:
            return iter(tensors)
        return CanonicalTensors(
            self.checkpoint, self.config.model_args, self.config.torch_dtype, self.static_modules
        )(tensors)

    def report(self) -> dict[str, Any]:
        """The tuned file's summary, how many distinct problems ran tuned or with the default
        solution, and how many calls did (eager calls and CUDA-graph captures)."""
        tuned = sum(1 for libtype in self.problems.values() if libtype != "default")
        return {
            "tuned_file": self.tuned.summary,
            "problems_tuned": tuned,
            "problems_default": len(self.problems) - tuned,
            "calls_tuned": self.tuned.hits["tuned"],
            "calls_default": self.tuned.hits["default"],
        }


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
    ``apply`` is capturable in a CUDA graph.
    """

    def __init__(self, config: Fp8Config, serialized: bool, static_input: bool) -> None:
        self.config = config
        self.serialized = serialized
        self.static_input = static_input
        self._problems: dict[tuple[int, bool, torch.dtype], GemmProblem] = {}

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
            weight, scale = quantize(layer.weight.data)
        else:
            weight, scales = layer.weight.data, layer.weight_scale.data
            if bool((scales == scales[0]).all()):
                scale = scales[0].clone()
            else:
                shards = list(weight.split(layer.output_sizes))
                weight, scale = requantize_shards(shards, list(scales))
            if self.static_input:
                layer.input_scale = _parameter(layer.input_scale.data.max())
        layer.weight = _parameter(weight)
        layer.weight_scale = _parameter(scale)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        q, scale = quantize_input(x2, layer.input_scale if self.static_input else None)
        key = (x2.shape[0], bias is not None, x.dtype)
        problem = self._problems.get(key)
        if problem is None:
            problem = self._problems[key] = GemmProblem.for_linear(
                layer.output_size, key[0], layer.input_size, bias=key[1], dtype=FP8, outdtype=key[2]
            )
        solution = self.config.tuned.solution(problem)
        self.config.problems.setdefault(problem, solution.libtype)
        y = solution.run(GemmOperands(q, layer.weight, scale, layer.weight_scale, bias))
        return y.view(*x.shape[:-1], y.shape[-1])


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


def tuned_gemm_report(model: nn.Module) -> dict[str, Any] | None:
    """``Fp8Config.report()`` of a model's fp8 layers, or None when it has none."""
    for module in model.modules():
        if isinstance(module, LinearBase) and isinstance(module.linear_method, Fp8LinearMethod):
            return module.linear_method.config.report()
    return None
