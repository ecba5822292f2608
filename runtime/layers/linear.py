"""Tensor-parallel linear layers over one linear-method interface.

A layer computes ``y[tokens, out] = x[tokens, in] @ W[out, in]ᵀ (+ b)`` on its shard:
column-parallel layers split ``out`` over the ranks, row-parallel ones split ``in`` and sum
the partial results (the split rules: ``shape_capture.sharding``, which shape capture derives
problems from too). How the weight is stored and the operands prepared (in the model dtype, or
fp8: ``runtime.quantization.fp8``) is the layer's ``LinearMethod``; the layer owns sharding and
loading, and runs every GEMM through its :class:`GemmDispatch`, the one dispatch point of every
linear layer (the LM head too): it builds the problem once per token count, records it when
shape capture is on, looks up the tuned solution and runs it.

Loading: every parameter carries ``weight_loader(param, loaded, shard_id=None)``, which checks
the full checkpoint tensor's shape and copies this rank's slice (``shard_id`` picks q/k/v or
gate/up in fused layers). A parameter's ``output_dim`` / ``input_dim`` attributes say which
dims are sharded (None: copied whole).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import nn

from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned import TunedGemms
from solidx.runtime.distributed import get_tp_rank, get_tp_size, tp_all_reduce
from solidx.runtime.quantization.input_quant import InputQuant, QuantizedInput
from solidx.shape_capture.recorder import active_recorder
from solidx.shape_capture.sharding import divide, head_shard


def set_weight_attrs(param: nn.Parameter, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        setattr(param, key, value)


def copy_shard(
    param: torch.Tensor,
    loaded: torch.Tensor,
    dim: int | None,
    param_offset: int = 0,
    loaded_offset: int = 0,
    size: int = 0,
    full_size: int = 0,
) -> None:
    """Copy ``loaded[loaded_offset : +size]`` along ``dim`` into ``param[param_offset : +size]``,
    after checking that ``loaded`` has the param's shape with ``full_size`` along ``dim``
    (``dim=None``: the whole tensor, same shape). Raises ValueError on a shape mismatch."""
    expected = list(param.shape)
    if dim is not None:
        expected[dim] = full_size
    if tuple(loaded.shape) != tuple(expected):
        raise ValueError(f"has shape {tuple(loaded.shape)}, expected {tuple(expected)}")
    if dim is None:
        param.data.copy_(loaded)
    else:
        param.data.narrow(dim, param_offset, size).copy_(loaded.narrow(dim, loaded_offset, size))


def layer_kind(prefix: str) -> str:
    """The kind of layer a module name is (``model.layers.3.self_attn.qkv_proj`` -> ``qkv``,
    ``lm_head`` -> ``lm_head``): what hits and misses are counted by."""
    return prefix.rsplit(".", 1)[-1].removesuffix("_proj")


class GemmDispatch:
    """Runs the GEMMs of one layer with the weight ``[out_features, in_features]``: problems are
    built once per (tokens, bias, dtypes) and recorded to the active shape recorder; each call
    runs the solution ``tuned`` gives for its problem (the engine hands every layer its one
    :class:`TunedGemms`; until then, none is tuned)."""

    def __init__(self, out_features: int, in_features: int, prefix: str) -> None:
        self.out_features, self.in_features = out_features, in_features
        self.prefix, self.kind = prefix, layer_kind(prefix)
        self.tuned = TunedGemms()
        self._problems: dict[tuple[int, bool, torch.dtype, torch.dtype], GemmProblem] = {}

    def __call__(self, ops: GemmOperands, outdtype: torch.dtype) -> torch.Tensor:
        """``[N, out]`` in ``outdtype`` for the operands of one call (``ops.x`` is ``[N, in]``)."""
        key = (ops.x.shape[0], ops.bias is not None, ops.x.dtype, outdtype)
        if key[0] == 0:  # no tokens (a step that samples nothing): no GEMM problem
            return ops.x.new_empty((0, self.out_features), dtype=outdtype)
        problem = self._problems.get(key)
        if problem is None:
            problem = self._problems[key] = GemmProblem.for_linear(
                self.out_features, key[0], self.in_features, bias=key[1], dtype=key[2],
                outdtype=outdtype)
        recorder = active_recorder()
        if recorder is not None:
            recorder.record(problem, self.prefix)
        return self.tuned.solution(problem, self.kind).run(ops)


def use_tuned_gemms(model: nn.Module, tuned: TunedGemms) -> None:
    """Hand ``tuned`` to the GEMM dispatch of every layer of ``model``."""
    for module in model.modules():
        dispatch = getattr(module, "gemm_dispatch", None)
        if isinstance(dispatch, GemmDispatch):
            dispatch.tuned = tuned


def tuned_gemms(model: nn.Module) -> TunedGemms:
    """The tuned solutions the layers of ``model`` run with (ValueError if it has no layer)."""
    for module in model.modules():
        dispatch = getattr(module, "gemm_dispatch", None)
        if isinstance(dispatch, GemmDispatch):
            return dispatch.tuned
    raise ValueError(f"{type(model).__name__} has no linear layer")


class LinearMethod(ABC):
    """How a linear layer stores its weight and prepares its GEMM's operands.

    ``create_weights`` registers the parameters on ``layer`` (a ``weight`` at least); a parameter
    may set its own ``weight_loader``, else the layer's is used. ``process_weights_after_loading``
    runs once after the whole checkpoint is loaded. ``operands`` gives the operands of
    ``x [tokens, in] @ Wᵀ + bias`` in the layout of :class:`GemmOperands` (capturable in a CUDA
    graph); the layer runs the GEMM. A method that quantizes its input says how in
    ``input_quant``; ``x`` may then arrive quantized that way, as a :class:`QuantizedInput`.
    """

    @abstractmethod
    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype
    ) -> None: ...

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        return None

    def input_quant(self, layer: nn.Module) -> InputQuant | None:
        """How ``operands`` quantizes the input (None: it takes the input as it is)."""
        return None

    @abstractmethod
    def operands(
        self, layer: nn.Module, x: torch.Tensor | QuantizedInput, bias: torch.Tensor | None
    ) -> GemmOperands: ...


class UnquantizedLinearMethod(LinearMethod):
    """The weight in the model dtype, used as it is."""

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype
    ) -> None:
        weight = nn.Parameter(
            torch.empty(sum(output_sizes), input_size, dtype=params_dtype), requires_grad=False
        )
        set_weight_attrs(weight, {"output_dim": 0, "input_dim": 1})
        layer.register_parameter("weight", weight)

    def operands(
        self, layer: nn.Module, x: torch.Tensor | QuantizedInput, bias: torch.Tensor | None
    ) -> GemmOperands:
        if isinstance(x, QuantizedInput):
            raise TypeError(f"{layer.prefix} is not quantized: it takes its input unquantized "
                            "(give quantized inputs only to layers whose input_quant() asks)")
        return GemmOperands(x, layer.weight, None, None, bias)


LinearMethodFactory = Callable[[str], LinearMethod]
"""Gives the linear method of the layer with a module name (``model.layers.0.mlp.down_proj``)."""


def unquantized(prefix: str) -> LinearMethod:
    return UnquantizedLinearMethod()


class LinearBase(nn.Module, ABC):
    """A linear layer's shard: ``input_size`` in, ``output_sizes`` (logical parts, fused layers
    have several) out, all per rank. ``prefix`` is the module name recorded with its problems."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool,
        params_dtype: torch.dtype,
        linear_method: LinearMethod | None,
        prefix: str,
    ) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.input_size = input_size
        self.output_sizes = output_sizes
        self.output_size = sum(output_sizes)
        self.prefix = prefix
        self.gemm_dispatch = GemmDispatch(self.output_size, input_size, prefix)
        self.linear_method = linear_method or UnquantizedLinearMethod()
        self.linear_method.create_weights(self, input_size, output_sizes, params_dtype)
        if bias:
            self.bias = nn.Parameter(
                torch.empty(self.output_size, dtype=params_dtype), requires_grad=False
            )
            set_weight_attrs(self.bias, {"output_dim": 0})
        else:
            self.register_parameter("bias", None)
        for param in self.parameters(recurse=False):
            if not hasattr(param, "weight_loader"):
                param.weight_loader = self.weight_loader

    @abstractmethod
    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None
    ) -> None:
        """Copy this rank's slice of the checkpoint tensor ``loaded`` into ``param``."""

    def _load_rank_slice(self, param: nn.Parameter, loaded: torch.Tensor, dim_attr: str) -> None:
        """Copy this rank's equal slice along the dim ``param`` names in ``dim_attr``
        (``output_dim`` or ``input_dim``); a param without it is copied whole."""
        dim = getattr(param, dim_attr, None)
        if dim is None:
            copy_shard(param, loaded, None)
            return
        size = param.shape[dim]
        copy_shard(param, loaded, dim, 0, self.tp_rank * size, size, size * self.tp_size)

    def input_quant(self) -> InputQuant | None:
        """How this layer quantizes its input: the kernel that produces the input may do it and
        hand over a :class:`QuantizedInput` (None: the layer takes a plain tensor)."""
        return self.linear_method.input_quant(self)

    def gemm(self, x: torch.Tensor | QuantizedInput, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ Wᵀ + bias`` for ``x [..., in]`` or the quantized rows of one: the method's
        operands through the dispatch."""
        if isinstance(x, QuantizedInput):
            return self.gemm_dispatch(self.linear_method.operands(self, x, bias), x.dtype)
        x2 = x.reshape(-1, x.shape[-1])
        y = self.gemm_dispatch(self.linear_method.operands(self, x2, bias), x.dtype)
        return y.view(*x.shape[:-1], self.output_size)

    def forward(self, x: torch.Tensor | QuantizedInput) -> torch.Tensor:
        return self.gemm(x, self.bias)


class ColumnParallelLinear(LinearBase):
    """``out`` split over ranks; each rank holds rows ``rank * out/tp ...`` of W (and of b)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        params_dtype: torch.dtype = torch.float32,
        linear_method: LinearMethod | None = None,
        prefix: str = "",
        output_sizes: list[int] | None = None,
    ) -> None:
        tp = get_tp_size()
        sizes = output_sizes or [output_size]
        per_rank = [divide(size, tp, f"{prefix} output size") for size in sizes]
        super().__init__(input_size, per_rank, bias, params_dtype, linear_method, prefix)

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None
    ) -> None:
        self._load_rank_slice(param, loaded, "output_dim")


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel layers with the same input fused into one (gate_up_proj):
    checkpoint tensor ``shard_id`` (0, 1, ...) fills part ``shard_id`` of each rank's rows."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = False,
        params_dtype: torch.dtype = torch.float32,
        linear_method: LinearMethod | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__(
            input_size,
            sum(output_sizes),
            bias,
            params_dtype,
            linear_method,
            prefix,
            output_sizes=output_sizes,
        )

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None
    ) -> None:
        dim = getattr(param, "output_dim", None)
        if shard_id is None or dim is None:
            super().weight_loader(param, loaded, shard_id)
            return
        size = self.output_sizes[shard_id]
        offset = sum(self.output_sizes[:shard_id])
        copy_shard(param, loaded, dim, offset, self.tp_rank * size, size, size * self.tp_size)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused, heads split over ranks. With fewer KV heads than ranks each
    KV head is replicated on ``tp / num_kv_heads`` consecutive ranks."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        params_dtype: torch.dtype = torch.float32,
        linear_method: LinearMethod | None = None,
        prefix: str = "",
    ) -> None:
        tp = get_tp_size()
        shard = head_shard(num_heads, num_kv_heads, tp)
        self.head_dim = head_dim
        self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
        self.kv_replicas = shard.kv_replicas
        sizes = [size * tp for size in shard.qkv_sizes(head_dim)]  # over all ranks, replicas too
        super().__init__(
            hidden_size,
            sum(sizes),
            bias,
            params_dtype,
            linear_method,
            prefix,
            output_sizes=sizes,
        )

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None
    ) -> None:
        dim = getattr(param, "output_dim", None)
        if shard_id is None or dim is None:
            super().weight_loader(param, loaded, shard_id)
            return
        if shard_id not in ("q", "k", "v"):
            raise ValueError(f"unknown qkv shard {shard_id!r}")
        index = "qkv".index(shard_id)
        size = self.output_sizes[index]
        offset = sum(self.output_sizes[:index])
        head_rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.kv_replicas
        full = size * (self.tp_size if shard_id == "q" else self.tp_size // self.kv_replicas)
        copy_shard(param, loaded, dim, offset, head_rank * size, size, full)


class RowParallelLinear(LinearBase):
    """``in`` split over ranks (the input arrives split); partial outputs summed over ranks,
    unless ``reduce_results`` is False: then each rank returns its partial sum (the bias in
    rank 0's) and the layer after it sums them (the RMSNorm's ``all_reduce``)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        params_dtype: torch.dtype = torch.float32,
        linear_method: LinearMethod | None = None,
        prefix: str = "",
        reduce_results: bool = True,
    ) -> None:
        per_rank = divide(input_size, get_tp_size(), f"{prefix} input size")
        super().__init__(per_rank, [output_size], bias, params_dtype, linear_method, prefix)
        self.reduce_results = reduce_results

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None
    ) -> None:
        self._load_rank_slice(param, loaded, "input_dim")

    def forward(self, x: torch.Tensor | QuantizedInput) -> torch.Tensor:
        if self.tp_size == 1:
            return self.gemm(x, self.bias)
        y = self.gemm(x, self.bias if self.tp_rank == 0 else None)
        return tp_all_reduce(y) if self.reduce_results else y
