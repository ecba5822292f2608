"""The engine's configuration: one frozen dataclass with vLLM's field names.

Every ``LLM(...)`` keyword and every ``solidx generate`` flag (kebab case) is a field here.
Derived values (the model's Hugging Face config and its architecture numbers, the torch dtype
and device, the resolved lengths) are computed once in ``__post_init__`` and never re-derived
elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from solidx.gradlib.dtypes import parse_dtype
from solidx.runtime.launch import launch_world_size, local_rank, torchrun_command
from solidx.shape_capture.model_args import ModelArgs
from solidx.shape_capture.presets import PRESETS, load_model_config

MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")  # vLLM's names
LOAD_FORMATS = ("auto", "dummy")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")
QUANTIZATION_METHODS: tuple[str | None, ...] = (None, "fp8")
EXECUTOR_BACKENDS: tuple[str | None, ...] = (None, "torchrun", "ray")
CHECKPOINT_QUANT_METHODS = ("quark", "fp8")  # config.json quant_method that loads as fp8
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
CPU_KV_CACHE_BYTES = 4 << 30  # vLLM's CPU default (VLLM_CPU_KVCACHE_SPACE=4)


def _opt(default: Any, help: str, choices: tuple[Any, ...] = ()) -> Any:
    """A field with a default, the help its command-line flag shows and, for a field of a few
    values, the ones that work (the flag offers these alone; ``None`` is left out)."""
    offered = tuple(c for c in choices if c is not None)
    return field(default=default, metadata={"help": help, "choices": offered})


@dataclass(frozen=True)
class Config:
    """What to run and how; see the README for each field. ``None`` means "derive it"."""

    model: str = field(
        metadata={"help": "Checkpoint folder, or a preset (with load_format=dummy)."}
    )
    tokenizer: str | None = _opt(
        None, "Tokenizer folder [default: the model's; bytes for presets]."
    )
    dtype: str = _opt("auto", "Model dtype (auto: the checkpoint's).", MODEL_DTYPES)
    seed: int = _opt(0, "Seed of dummy weights and of sampling without a per-request seed.")
    tensor_parallel_size: int = _opt(1, "Ranks sharing each layer (run under torchrun).")
    disable_custom_all_reduce: bool = _opt(
        False, "All-reduce through NCCL alone, not the one-shot NVLink kernel (GPUs, TP > 1)."
    )
    distributed_executor_backend: str | None = _opt(
        None, "How the ranks start: torchrun (the default: run under torchrun) or ray.",
        EXECUTOR_BACKENDS,
    )
    worker_use_ray: bool = _opt(False, "Start the ranks as Ray actors (backend ray).")
    quantization: str | None = _opt(
        None, "Weight quantization [default: the checkpoint's quantization_config, if any].",
        QUANTIZATION_METHODS,
    )
    quantization_param_path: str | None = _opt(
        None, "fp8 weights and scales file (Quark or AMMO), relative to the model folder."
    )
    kv_cache_dtype: str = _opt(
        "auto", "KV cache dtype: auto (the model dtype) or fp8 (e4m3).", KV_CACHE_DTYPES
    )
    max_model_len: int | None = _opt(
        None, "Longest sequence, prompt + output [default: the model's]."
    )
    max_num_seqs: int = _opt(256, "Most sequences running at once.")
    max_num_batched_tokens: int | None = _opt(None, "Token budget of one step [default: 8192].")
    block_size: int = _opt(16, "Tokens per KV cache block.")
    gpu_memory_utilization: float = _opt(
        0.9, "Share of GPU memory for weights, activations, cache."
    )
    kv_cache_memory_bytes: int | None = _opt(
        None, "KV cache bytes, instead of profiling / 4 GiB on CPU."
    )
    num_gpu_blocks_override: int | None = _opt(None, "Exact number of KV cache blocks (testing).")
    enforce_eager: bool = _opt(False, "Never use CUDA graphs.")
    async_scheduling: bool = _opt(
        False, "Schedule and prepare the next step while the device runs this one."
    )
    load_format: str = _opt(
        "auto", "auto (the folder's safetensors) or dummy (seeded random weights).", LOAD_FORMATS
    )
    enable_prefix_caching: bool = _opt(False, "Reuse the KV blocks of a common prompt prefix.")
    max_logprobs: int = _opt(20, "Most logprobs a request may ask for (-1: no limit).")
    tuned_gemm: str | None = _opt(
        None,
        "Tuned GEMM file for every linear layer [default: $SOLIDX_TUNED_GEMM, else "
        "$VLLM_TUNE_FILE, else /tmp/tuned_fp8_16.csv and tuned.csv where they exist].",
    )
    device: str = _opt("auto", "auto (cuda when available), cuda, cuda:N or cpu.")

    hf_config: dict[str, Any] = field(init=False, repr=False, compare=False)
    model_args: ModelArgs = field(init=False, repr=False, compare=False)
    torch_dtype: torch.dtype = field(init=False, compare=False)
    torch_device: torch.device = field(init=False, compare=False)

    def __post_init__(self) -> None:
        hf_config = load_model_config(self.model)
        source = f"preset {self.model}" if self.is_preset else f"{self.model}/config.json"
        args = ModelArgs.from_hf(hf_config, source)
        derived: dict[str, Any] = {"hf_config": hf_config, "model_args": args}
        derived["torch_device"] = _resolve_device(self.device)
        derived["torch_dtype"] = _resolve_dtype(self.dtype, hf_config)
        derived["max_model_len"] = _resolve_max_model_len(self.max_model_len, args, hf_config)
        derived["distributed_executor_backend"] = _resolve_backend(
            self.distributed_executor_backend, self.worker_use_ray
        )
        derived["quantization"] = _resolve_quantization(self.quantization, hf_config)
        batched = self.max_num_batched_tokens or max(
            DEFAULT_MAX_NUM_BATCHED_TOKENS, self.max_num_seqs
        )
        derived["max_num_batched_tokens"] = batched
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        self._validate()

    @property
    def is_preset(self) -> bool:
        return self.model in PRESETS

    @property
    def kv_cache_torch_dtype(self) -> torch.dtype:
        """The KV cache's element type: the model dtype, or e4m3 for ``kv_cache_dtype="fp8"``."""
        return self.torch_dtype if self.kv_cache_dtype == "auto" else torch.float8_e4m3fn

    def _validate(self) -> None:
        _choice("load_format", self.load_format, LOAD_FORMATS)
        _choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        _choice("quantization", self.quantization, QUANTIZATION_METHODS)
        _choice(
            "distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS
        )
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "block_size",
            "tensor_parallel_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_logprobs < -1:
            raise ValueError(f"max_logprobs must be >= -1, got {self.max_logprobs}")
        for name in ("num_gpu_blocks_override", "kv_cache_memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} ({flag}) must be >= 1 when given, got {value}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}): each running sequence needs a token a step"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.quantization_param_path and self.quantization != "fp8":
            raise ValueError("quantization_param_path holds fp8 weights: pass quantization='fp8'")
        if self.is_preset and self.load_format != "dummy":
            raise ValueError(
                f"preset {self.model!r} has no weights: pass load_format='dummy' "
                "or a checkpoint folder"
            )
        world = launch_world_size()
        if self.distributed_executor_backend != "ray" and world != self.tensor_parallel_size:
            raise ValueError(
                f"tensor_parallel_size={self.tensor_parallel_size} but this launch has {world} "
                f"rank(s); run one process per rank: "
                f"{torchrun_command(self.tensor_parallel_size, self.model)} ... (your own script: "
                f"torchrun --nproc-per-node={self.tensor_parallel_size} script.py), or start the "
                "ranks as Ray actors with distributed_executor_backend='ray' (--worker-use-ray)"
            )


def _choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{name}={value!r} is not supported (supported: {', '.join(map(repr, allowed))})"
        )


def _resolve_device(device: str) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; ``cuda`` without an index:
    this rank's GPU (cuda:LOCAL_RANK, so every rank of a launch may be given ``cuda``)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", local_rank())
    return resolved


def _resolve_dtype(dtype: str, hf_config: dict[str, Any]) -> torch.dtype:
    """``auto``: the checkpoint's dtype (config.json ``dtype`` / ``torch_dtype``), else float32."""
    if dtype not in MODEL_DTYPES:
        _choice("dtype", dtype, MODEL_DTYPES)
    if dtype != "auto":
        resolved = parse_dtype(dtype)
    else:
        resolved = parse_dtype(
            str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32")
        )
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(
            f"dtype={dtype!r}: the checkpoint's dtype {resolved} is not a model dtype "
            "(pass float32, float16 or bfloat16)"
        )
    return resolved


def _resolve_backend(backend: str | None, worker_use_ray: bool) -> str | None:
    """``worker_use_ray`` is ``distributed_executor_backend="ray"`` (vLLM's older flag)."""
    if not worker_use_ray:
        return backend
    if backend not in (None, "ray"):
        raise ValueError(f"worker_use_ray contradicts distributed_executor_backend={backend!r}")
    return "ray"


def _resolve_quantization(requested: str | None, hf_config: dict[str, Any]) -> str | None:
    """The requested method, else the checkpoint's (``quantization_config.quant_method``)."""
    method = (hf_config.get("quantization_config") or {}).get("quant_method")
    if method is None or requested is not None:
        return requested
    if method not in CHECKPOINT_QUANT_METHODS:
        raise ValueError(
            f"the checkpoint is quantized with quant_method={method!r}, which is not supported "
            f"(supported: {', '.join(CHECKPOINT_QUANT_METHODS)}, loaded as quantization='fp8')"
        )
    return "fp8"


def _sliding_window(hf_config: dict[str, Any]) -> int | None:
    """The attention window the model was trained with, if it limits context (Mistral v0.1)."""
    window = hf_config.get("sliding_window")
    if hf_config.get("model_type") == "qwen2" and not hf_config.get("use_sliding_window", False):
        return None
    return int(window) if window else None


def _resolve_max_model_len(
    requested: int | None, args: ModelArgs, hf_config: dict[str, Any]
) -> int:
    limit = args.max_position_embeddings
    window = _sliding_window(hf_config)
    what = "max_position_embeddings"
    if window is not None and window < limit:
        limit, what = window, "sliding_window (sliding-window attention is not implemented)"
    if requested is None:
        return limit
    if requested < 1 or requested > limit:
        raise ValueError(f"max_model_len={requested} must be in 1..{limit} (the model's {what})")
    return requested
