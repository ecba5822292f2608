"""fp8 checkpoint layouts, read into one canonical form the model loads.

Canonical names are Hugging Face module names with these tensors per quantized linear layer:
``<module>.weight`` (float8_e4m3fn ``[out, in]``), ``<module>.weight_scale`` and, with static
activation scales, ``<module>.input_scale`` (0-d float32, ``x ≈ q · scale``). KV-cache scales are
``model.layers.<i>.self_attn.k_scale`` / ``v_scale``; they never reach the model's parameters.

Layouts:

* ``quark`` (config.json ``quantization_config.quant_method == "quark"``, the default):
  ``weight_scale`` / ``input_scale`` / ``output_scale``, or Quark's module names
  ``weight_quantizer.scale`` / ``input_quantizer.scale`` / ``output_quantizer.scale``. The output
  scale of ``k_proj`` / ``v_proj`` is the KV-cache scale; other output scales are not used.
* ``fp8`` (Quark's ``quant_method: "fp8"`` export): ``weight_scale`` / ``input_scale``,
  ``self_attn.k_scale`` / ``v_scale`` (or one ``self_attn.kv_scale`` for both).
* ``ammo`` (``VLLM_FP8_USE_AMMO=1``, TensorRT-LLM names): ``transformer.layers.<i>.attention.qkv``
  (fused q/k/v, split here), ``attention.dense`` (o_proj), ``mlp.fc`` (gate), ``mlp.gate`` (up),
  ``mlp.proj`` (down), ``input_layernorm``, ``post_layernorm``, ``transformer.vocab_embedding``,
  ``transformer.ln_f``, ``lm_head``; scales ``weights_scaling_factor``,
  ``activation_scaling_factor``, ``output_scaling_factor`` (not used) and
  ``attention.kv_cache_scaling_factor`` (keys and values).

A separate quantized-weights file (``quantization_param_path``, relative to the model folder)
overrides the folder's tensors of the same canonical name. Which layers are quantized is read
from the safetensors headers (a linear layer whose weight is stored as fp8), before any data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from solidx.runtime.checkpoint import CheckpointTensor
from solidx.shape_capture.model_args import ModelArgs
from solidx.runtime.quantization.fp8_math import FP8_DTYPE, dequantize

logger = logging.getLogger(__name__)

LAYOUTS = ("quark", "fp8", "ammo")
SCALE_SUFFIXES = (".weight_scale", ".input_scale", ".k_scale", ".v_scale")

_QUARK_LEAVES = {
    "weight_quantizer.scale": "weight_scale",
    "input_quantizer.scale": "input_scale",
    "output_quantizer.scale": "output_scale",
}
_AMMO_LEAVES = {
    "weights_scaling_factor": "weight_scale",
    "activation_scaling_factor": "input_scale",
    "output_scaling_factor": "output_scale",
}
_AMMO_LAYER_MODULES = {
    "attention.dense": "self_attn.o_proj",
    "mlp.fc": "mlp.gate_proj",
    "mlp.gate": "mlp.up_proj",
    "mlp.proj": "mlp.down_proj",
    "input_layernorm": "input_layernorm",
    "post_layernorm": "post_attention_layernorm",
}
_AMMO_TOP_MODULES = {
    "transformer.vocab_embedding": "model.embed_tokens",
    "transformer.ln_f": "model.norm",
    "lm_head": "lm_head",
}
_AMMO_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)")
_QKV_PARTS = ("q_proj", "k_proj", "v_proj")


def canonical_names(name: str, layout: str) -> list[str]:
    """The canonical names a checkpoint tensor stands for: usually one; three for AMMO's fused
    qkv tensors (split by :class:`CanonicalTensors`); two for a KV scale shared by keys and
    values; none for an output scale that is not a KV-cache scale."""
    names = []
    for one in _ammo_names(name) if layout == "ammo" else [name]:
        for quark, leaf in _QUARK_LEAVES.items():
            if one.endswith("." + quark):
                one = one[: -len(quark)] + leaf
        module, _, leaf = one.rpartition(".")
        if leaf == "output_scale":
            if module.endswith(("self_attn.k_proj", "self_attn.v_proj")):
                parent, proj = module.rsplit(".", 1)
                names.append(f"{parent}.{proj[0]}_scale")
        elif leaf == "kv_scale":
            names += [f"{module}.k_scale", f"{module}.v_scale"]
        else:
            names.append(one)
    return names


def _ammo_names(name: str) -> list[str]:
    """A TensorRT-LLM name -> the Hugging Face name(s) it stands for (unknown names unchanged)."""
    for ammo, hf in _AMMO_TOP_MODULES.items():
        if name.startswith(ammo + "."):
            return [hf + name[len(ammo) :]]
    match = _AMMO_LAYER.fullmatch(name)
    if match is None:
        return [name]
    prefix, (module, _, leaf) = f"model.layers.{match[1]}", match[2].rpartition(".")
    leaf = _AMMO_LEAVES.get(leaf, leaf)
    if module == "attention" and leaf == "kv_cache_scaling_factor":
        return [f"{prefix}.self_attn.kv_scale"]
    if module == "attention.qkv":
        return [f"{prefix}.self_attn.{part}.{leaf}" for part in _QKV_PARTS]
    if module in _AMMO_LAYER_MODULES:
        return [f"{prefix}.{_AMMO_LAYER_MODULES[module]}.{leaf}"]
    return [name]


def fused_parts(prefix: str, packed: dict[str, tuple[str, object]]) -> list[str]:
    """The checkpoint modules a model module stands for: ``...qkv_proj`` -> its ``q_proj``,
    ``k_proj``, ``v_proj`` (from the model's ``packed_modules_mapping``); else itself."""
    parent, _, leaf = prefix.rpartition(".")
    parts = [f"{parent}.{part}" for part, (fused, _) in packed.items() if fused == leaf]
    return parts or [prefix]


def is_scale(name: str) -> bool:
    return name.endswith(SCALE_SUFFIXES)


def checked_scale(tensor: torch.Tensor, name: str, source: str) -> torch.Tensor:
    """A per-tensor scale as a 0-d float32 tensor; ValueError naming it if it is not one scale
    (shape () or (1,)), not a float, NaN/inf, zero or negative."""
    where = f"{source}: tensor {name!r}"
    if tensor.numel() != 1 or tensor.dim() > 1:
        raise ValueError(
            f"{where} has shape {tuple(tensor.shape)}: fp8 scales are per tensor (shape () or (1,))"
        )
    if not tensor.dtype.is_floating_point or tensor.dtype == FP8_DTYPE:
        raise ValueError(f"{where} is {tensor.dtype}: a scale is a float32/bfloat16/float16 value")
    value = tensor.reshape(()).float()
    if not (torch.isfinite(value) and value > 0):
        raise ValueError(f"{where} is {value.item()}: a scale must be finite and positive")
    return value


@dataclass
class Fp8Checkpoint:
    """What an fp8 checkpoint holds, from config.json and the safetensors headers (no data).

    ``fp8_modules``: canonical module names whose weight is stored as fp8; ``static_input``:
    whether quantized layers carry activation scales (else they are computed per call)."""

    layout: str
    fp8_modules: frozenset[str]
    static_input: bool
    side_file: Path | None = None
    side_names: frozenset[str] = frozenset()
    kv_scales: dict[int, dict[str, float]] = field(default_factory=dict)


def inspect_checkpoint(
    hf_config: dict[str, Any],
    files: list[Path],
    side_file: Path | None,
    use_ammo: bool,
) -> Fp8Checkpoint:
    """Describe the checkpoint made of ``files`` (the model folder's) and ``side_file``."""
    quant = hf_config.get("quantization_config") or {}
    method = quant.get("quant_method")
    layout = "ammo" if use_ammo else (method if method in LAYOUTS else "quark")
    side_names: set[str] = set()
    stored: dict[str, str] = {}  # canonical name -> safetensors dtype
    for path in files + ([side_file] if side_file else []):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                for name in canonical_names(key, layout):
                    stored[name] = f.get_slice(key).get_dtype()
                    if path == side_file:
                        side_names.add(name)
    fp8_modules = frozenset(
        name.removesuffix(".weight")
        for name, dtype in stored.items()
        if name.endswith(".weight") and dtype.startswith("F8")
    )
    if method == "quark":
        static = _quark_static_input(quant)
    elif method == "fp8":
        static = _fp8_static_input(quant)
    else:  # no declaration (a side file, an AMMO export): static where scales are stored
        static = any(name.endswith(".input_scale") for name in stored)
    return Fp8Checkpoint(layout, fp8_modules, static and bool(fp8_modules), side_file,
                         frozenset(side_names))


def _quark_static_input(quant: dict[str, Any]) -> bool:
    """Whether a Quark config quantizes activations with static scales (fp8 e4m3 per tensor is
    the only scheme supported; ValueError for another)."""
    spec = quant.get("global_quant_config") or {}
    for part in ("weight", "input_tensors"):
        tensor_spec = spec.get(part)
        if tensor_spec is None:
            continue
        dtype, scheme = tensor_spec.get("dtype"), tensor_spec.get("qscheme")
        if dtype != "fp8_e4m3" or scheme != "per_tensor":
            raise ValueError(
                f"Quark checkpoint quantizes {part} as dtype={dtype!r}, qscheme={scheme!r}: "
                "only fp8_e4m3 per_tensor is supported"
            )
    inputs = spec.get("input_tensors")
    return inputs is not None and not inputs.get("is_dynamic", False)


def _fp8_static_input(quant: dict[str, Any]) -> bool:
    if quant.get("weight_block_size"):
        raise ValueError(
            f"fp8 checkpoint with block-wise weight scales ({quant['weight_block_size']}): "
            "only per-tensor scales are supported"
        )
    scheme = quant.get("activation_scheme", "dynamic")
    if scheme not in ("static", "dynamic"):
        raise ValueError(f"fp8 checkpoint activation_scheme {scheme!r} is not static or dynamic")
    return scheme == "static"


class CanonicalTensors:
    """Streams checkpoint tensors as canonical ones: names mapped, AMMO's qkv split, scales
    checked (:func:`checked_scale`), KV-cache scales collected into ``checkpoint.kv_scales``,
    and fp8 weights of layers the model keeps in ``dtype`` (``lm_head``, embeddings, excluded
    layers) dequantized with their scale."""

    def __init__(
        self, checkpoint: Fp8Checkpoint, args: ModelArgs, dtype: torch.dtype,
        quantized_modules: set[str],
    ) -> None:
        self.checkpoint = checkpoint
        q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        self.qkv_sizes = [q, kv, kv]
        self.dtype = dtype
        self.quantized_modules = quantized_modules
        self._pending: dict[str, dict[str, tuple[torch.Tensor, str]]] = {}

    def __call__(self, tensors: Iterable[CheckpointTensor]) -> Iterator[CheckpointTensor]:
        side, layout = self.checkpoint.side_file, self.checkpoint.layout
        for name, tensor, source in tensors:
            if side is not None and any(
                n in self.checkpoint.side_names for n in canonical_names(name, layout)
            ):
                continue  # the quantized-weights file provides it
            yield from self._convert(name, tensor, source)
        if side is not None:
            with safe_open(str(side), framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield from self._convert(name, f.get_tensor(name), side.name)
        for module, parts in self._pending.items():
            if "weight" in parts:
                source = parts["weight"][1]
                raise ValueError(f"{source}: fp8 tensor {module + '.weight'!r} has no "
                                 f"{module + '.weight_scale'!r} in the checkpoint")

    def _convert(self, name: str, tensor: torch.Tensor, source: str) -> Iterator[CheckpointTensor]:
        names = canonical_names(name, self.checkpoint.layout)
        if len(names) == 3 and tensor.numel() > 1:
            if tensor.shape[0] != sum(self.qkv_sizes):
                raise ValueError(
                    f"{source}: tensor {name!r} has {tensor.shape[0]} rows, expected "
                    f"{sum(self.qkv_sizes)} (q, k, v of {self.qkv_sizes})"
                )
            parts = list(tensor.split(self.qkv_sizes))
        else:
            parts = [tensor] * len(names)
        for canonical, part in zip(names, parts):
            if is_scale(canonical):
                part = checked_scale(part, name, source)
            if canonical.endswith((".k_scale", ".v_scale")):
                self._kv_scale(canonical, part)
                continue
            module, _, leaf = canonical.rpartition(".")
            if leaf == "input_scale" and not self.checkpoint.static_input:
                continue  # activations are quantized per call
            if module in self.checkpoint.fp8_modules and module not in self.quantized_modules:
                yield from self._dequantized(module, leaf, part, source)
                continue
            yield canonical, part, source

    def _kv_scale(self, name: str, scale: torch.Tensor) -> None:
        parts = name.split(".")  # model.layers.<i>.self_attn.<k|v>_scale
        self.checkpoint.kv_scales.setdefault(int(parts[2]), {})[parts[-1][0]] = float(scale)

    def _dequantized(
        self, module: str, leaf: str, tensor: torch.Tensor, source: str
    ) -> Iterator[CheckpointTensor]:
        """An fp8 layer the model runs in ``dtype``: its weight once its scale is in."""
        if leaf not in ("weight", "weight_scale"):
            return  # activation scales of a layer that is not quantized
        parts = self._pending.setdefault(module, {})
        parts[leaf] = (tensor, source)
        if len(parts) == 2:
            del self._pending[module]
            weight, where = parts["weight"]
            logger.info("%s is stored as fp8; the model runs it in %s (dequantized)", module,
                        self.dtype)
            scale = parts["weight_scale"][0]
            yield f"{module}.weight", dequantize(weight, scale, self.dtype), where
