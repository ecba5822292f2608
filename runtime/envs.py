"""Every environment variable solidx reads, in one place (documented in the README).

Values are read when accessed (``envs.TUNE_FP8``), so tests may set them with monkeypatch.
The ROCm names keep the meaning the ROCm docs give them; solidx's own start with ``SOLIDX_``.
"""
from __future__ import annotations

import os
from typing import Any, Callable

_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, default: bool) -> Callable[[], bool]:
    def read() -> bool:
        value = os.environ.get(name)
        return default if value is None else value.strip().lower() not in _FALSE
    return read


def _str(name: str, default: str | None) -> Callable[[], str | None]:
    return lambda: os.environ.get(name, default)


def _seconds(name: str, default: float) -> Callable[[], float]:
    def read() -> float:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < float("inf"):
            raise ValueError(f"{name}={value!r}: expected a number of seconds > 0")
        return seconds
    return read


def _pdl() -> bool:
    """SOLIDX_PDL, parsed where the kernels read it (gradlib imports nothing of ours); imported
    when read, so that light commands load no torch."""
    from solidx.gradlib.kernels import dependent_launch

    return dependent_launch.requested()


def _triton_flash_attn() -> bool:
    """VLLM_USE_FLASH_ATTN_TRITON (ROCm docs) or its later name VLLM_USE_TRITON_FLASH_ATTN;
    the first one set wins; default on."""
    for name in ("VLLM_USE_FLASH_ATTN_TRITON", "VLLM_USE_TRITON_FLASH_ATTN"):
        if name in os.environ:
            return _flag(name, True)()
    return True


_READERS: dict[str, Callable[[], Any]] = {
    # Record every fp8 GEMM the engine issues to the shapes file.
    "TUNE_FP8": _flag("TUNE_FP8", False),
    # Where TUNE_FP8 / capture-shapes write (ROCm's default path).
    "SOLIDX_SHAPES_FILE": _str("SOLIDX_SHAPES_FILE", "/tmp/fp8_shapes.csv"),
    # Tuned GEMM file every linear layer uses (else VLLM_TUNE_FILE, else ROCm's defaults).
    "SOLIDX_TUNED_GEMM": _str("SOLIDX_TUNED_GEMM", None),
    # ROCm's 16-bit capture: record every bf16/fp16 GEMM (LM head included) to VLLM_UNTUNE_FILE.
    "VLLM_TUNE_GEMM": _flag("VLLM_TUNE_GEMM", False),
    "VLLM_UNTUNE_FILE": _str("VLLM_UNTUNE_FILE", "/tmp/vllm_untuned.csv"),
    # ROCm's tuned file (unset: tuned.csv, loaded only when it exists).
    "VLLM_TUNE_FILE": _str("VLLM_TUNE_FILE", None),
    # Prefill attention: solidx's Triton kernel (default) or the framework's flash attention.
    "VLLM_USE_TRITON_FLASH_ATTN": _triton_flash_attn,
    # Decode attention: custom paged attention where it applies (default) or PagedAttention v2.
    "VLLM_USE_ROCM_CUSTOM_PAGED_ATTN": _flag("VLLM_USE_ROCM_CUSTOM_PAGED_ATTN", True),
    # fp8 checkpoints in AMMO (TensorRT-LLM) layout instead of Quark's.
    "VLLM_FP8_USE_AMMO": _flag("VLLM_FP8_USE_AMMO", False),
    # PyTorch TunableOp (read by torch itself; mirrored here for the engine's decisions).
    "PYTORCH_TUNABLEOP_ENABLED": _flag("PYTORCH_TUNABLEOP_ENABLED", False),
    "PYTORCH_TUNABLEOP_TUNING": _flag("PYTORCH_TUNABLEOP_TUNING", True),
    "PYTORCH_TUNABLEOP_FILENAME": _str("PYTORCH_TUNABLEOP_FILENAME", "tunableop_results%d.csv"),
    # `solidx serve`'s API key when --api-key is not given (vLLM's name).
    "VLLM_API_KEY": _str("VLLM_API_KEY", None),
    # Seconds a rank waits at start for every other rank of its launch (then names the missing).
    "SOLIDX_RENDEZVOUS_TIMEOUT": _seconds("SOLIDX_RENDEZVOUS_TIMEOUT", 30.0),
    # Set by torchrun: its agent hosts the rendezvous store (else rank 0 does).
    "TORCHELASTIC_USE_AGENT_STORE": _flag("TORCHELASTIC_USE_AGENT_STORE", False),
    # 0: solidx's Triton kernels launch without programmatic dependent launch.
    "SOLIDX_PDL": _pdl,
    # 1: under tensor parallelism the all-reduce after o_proj / down_proj is fused into the
    # RMSNorm after it (runtime.layers.fused.all_reduce_rms_norm); off until it has run on
    # several GPUs.
    "SOLIDX_FUSED_ALL_REDUCE": _flag("SOLIDX_FUSED_ALL_REDUCE", False),
    # Log level of solidx's loggers (DEBUG shows which attention kernel ran).
    "SOLIDX_LOG_LEVEL": _str("SOLIDX_LOG_LEVEL", "INFO"),
    # CPU intra-op threads the user chose (OpenMP's and MKL's names); the engine then keeps
    # torch's setting instead of choosing one (runtime.cpu_threads).
    "OMP_NUM_THREADS": _str("OMP_NUM_THREADS", None),
    "MKL_NUM_THREADS": _str("MKL_NUM_THREADS", None),
}

VARIABLES: tuple[str, ...] = tuple(_READERS)


def __getattr__(name: str) -> Any:
    if name in _READERS:
        return _READERS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
