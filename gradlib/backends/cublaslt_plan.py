"""cuBLASLt's algorithm enumeration for one GEMM problem, on top of the shared Lt calls of
:class:`~solidx.gradlib.backends.lt_plan.LtPlan`: algorithm ids, their capabilities, a
configuration's ``cublasLtMatmulAlgo_t`` and ``cublasLtMatmulAlgoCheck`` (calls hipBLASLt's C API
does not have).

A configuration (:class:`~solidx.gradlib.backends.cublaslt_configs.AlgoConfig`) becomes a
``cublasLtMatmulAlgo_t`` through :meth:`MatmulPlan.build`; :meth:`MatmulPlan.check` says
whether ``cublasLtMatmulAlgoCheck`` accepts it and with how much workspace.
"""
from __future__ import annotations

import ctypes
import dataclasses

import torch

from solidx.gradlib.backends import cublaslt_api as api
from solidx.gradlib.backends.base import WORKSPACE_BYTES
from solidx.gradlib.backends.cublaslt_configs import AlgoCaps, AlgoConfig
from solidx.gradlib.backends.lt_plan import LtPlan
from solidx.gradlib.backends.lt_vendor import CUBLASLT
from solidx.gradlib.problem import GemmProblem

_CONFIG_ATTRS = (  # cublasLtMatmulAlgoConfigAttributes_t in AlgoConfig's field order
    api.CONFIG_ID, api.CONFIG_TILE_ID, api.CONFIG_STAGES_ID, api.CONFIG_SPLITK_NUM,
    api.CONFIG_REDUCTION_SCHEME, api.CONFIG_CTA_SWIZZLING, api.CONFIG_CUSTOM_OPTION,
    api.CONFIG_CLUSTER_SHAPE_ID, api.CONFIG_INNER_SHAPE_ID,
)


class MatmulPlan(LtPlan):
    """The cuBLASLt plan of one (M, K, bias, dtypes) on one CUDA device: the shared Lt
    descriptors plus cuBLASLt's algorithm enumeration."""

    def __init__(self, problem: GemmProblem, device_index: int) -> None:
        super().__init__(CUBLASLT, api.library(), problem, torch.device("cuda", device_index))
        self.device_index = device_index

    def heuristic_algos(self, n: int, count: int) -> list[api.MatmulAlgo]:
        """The heuristic's picks for ``n`` tokens, best first (empty if none apply)."""
        return [r.algo for r in self.heuristic(n, count)]

    def algo_ids(self) -> list[int]:
        ids, returned = (ctypes.c_int * 1024)(), ctypes.c_int()
        api.call(self.lib, "cublasLtMatmulAlgoGetIds", self.handle, *self.types, len(ids), ids,
                 ctypes.byref(returned))
        return list(ids[: returned.value])

    def _init(self, algo_id: int) -> api.MatmulAlgo | None:
        algo = api.MatmulAlgo()
        status = self.lib.cublasLtMatmulAlgoInit(self.handle, *self.types, algo_id,
                                                 ctypes.byref(algo))
        return algo if status == api.CUBLAS_STATUS_SUCCESS else None

    def caps(self, algo_id: int) -> AlgoCaps | None:
        """An algorithm id's capabilities for these types, or None if it does not apply or the
        library cannot report them."""
        algo = self._init(algo_id)
        if algo is None:
            return None
        written = ctypes.c_size_t()

        def get(attr: int, buf: object, size: int) -> None:
            api.call(self.lib, "cublasLtMatmulAlgoCapGetAttribute", ctypes.byref(algo), attr,
                     buf, size, ctypes.byref(written))

        def scalar(attr: int, ctype: type = ctypes.c_uint32) -> int:
            value = ctype()
            get(attr, ctypes.byref(value), ctypes.sizeof(value))
            return value.value

        def ids(attr: int) -> tuple[int, ...]:
            get(attr, None, 0)  # asks for the size
            values = (ctypes.c_uint32 * (written.value // 4))()
            get(attr, values, ctypes.sizeof(values))
            return tuple(v for v in values[: written.value // 4] if v != 0)

        try:
            return AlgoCaps(
                tiles=ids(api.CAP_TILE_IDS),
                stages=ids(api.CAP_STAGES_IDS),
                splitk=bool(scalar(api.CAP_SPLITK_SUPPORT, ctypes.c_int32)),
                red_mask=scalar(api.CAP_REDUCTION_SCHEME_MASK),
                swizzle=bool(scalar(api.CAP_CTA_SWIZZLING_SUPPORT)),
                custom_max=scalar(api.CAP_CUSTOM_OPTION_MAX, ctypes.c_int32),
                epilogue_mask=scalar(api.CAP_EPILOGUE_MASK),
            )
        except RuntimeError:  # a library that will not describe an id: enumerate without it
            return None

    def config_of(self, algo: api.MatmulAlgo) -> AlgoConfig:
        values = []
        written = ctypes.c_size_t()
        for attr in _CONFIG_ATTRS:
            value = api.CONFIG_CTYPES[attr]()
            api.call(self.lib, "cublasLtMatmulAlgoConfigGetAttribute", ctypes.byref(algo), attr,
                     ctypes.byref(value), ctypes.sizeof(value), ctypes.byref(written))
            values.append(value.value)
        return AlgoConfig(*values)

    def build(self, config: AlgoConfig) -> api.MatmulAlgo:
        """``cublasLtMatmulAlgoInit`` + every configuration attribute; ValueError if refused."""
        algo = self._init(config.algo_id)
        if algo is None:
            raise ValueError(f"{config.spec}: no algo id {config.algo_id} for {self.problem}")
        for attr, value in zip(_CONFIG_ATTRS[1:], dataclasses.astuple(config)[1:]):
            buf = api.CONFIG_CTYPES[attr](value)
            status = self.lib.cublasLtMatmulAlgoConfigSetAttribute(
                ctypes.byref(algo), attr, ctypes.byref(buf), ctypes.sizeof(buf))
            if status != api.CUBLAS_STATUS_SUCCESS:
                raise ValueError(f"{config.spec}: cuBLASLt refuses config attribute {attr}={value}"
                                 f" ({api.status_name(status)})")
        return algo

    def check(self, algo: api.MatmulAlgo, n: int) -> int | None:
        """Workspace bytes the algorithm needs for ``n`` tokens, or None if AlgoCheck refuses it
        or it needs more than ``WORKSPACE_BYTES``."""
        result = api.HeuristicResult()
        layout_b, layout_d = self.layouts(n)
        status = self.lib.cublasLtMatmulAlgoCheck(
            self.handle, self.desc, self.layout_a, layout_b, layout_d, layout_d,
            ctypes.byref(algo), ctypes.byref(result))
        if status != api.CUBLAS_STATUS_SUCCESS or result.workspaceSize > WORKSPACE_BYTES:
            return None
        return result.workspaceSize

