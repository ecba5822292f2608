"""Building a model and filling its weights, strictly.

The model is built on the meta device (no memory), materialized uninitialized on the target
device, then every checkpoint tensor is streamed through its parameter's ``weight_loader``
(fused q/k/v and gate/up included). A checkpoint tensor the model has no place for, a parameter
(or fused part) the checkpoint does not fill, a tensor of the wrong shape or dtype, or one all NaN
is an error naming it; a model too big for the device is refused before anything is allocated.
``load_format="dummy"`` streams a synthetic checkpoint of seeded random tensors through the same
path, so dummy weights are identical at every tensor-parallel size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from solidx.gradlib.dtypes import is_fp8
from solidx.runtime.checkpoint import CheckpointTensor, checkpoint_tensors, dummy_tensors
from solidx.runtime.config import Config
from solidx.runtime.layers.linear import LinearBase, copy_shard, unquantized, use_tuned_gemms
from solidx.runtime.layers.quantization import get_quantization
from solidx.runtime.models import get_model_class
from solidx.runtime.quantization.kv_cache import set_kv_cache_scales
from solidx.runtime.tuned_gemm import load_tuned_gemms, start_gemm_capture

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_model(config: Config) -> nn.Module:
    """The model of ``config`` on its device with every weight loaded, in inference mode.
    A quantized model's checkpoint tensors pass through its quantization's adapter (names,
    scales, a separate quantized-weights file); the KV-cache scales are set last. The tuned GEMM
    file is loaded here, once, and handed to every linear layer."""
    args = config.model_args
    cls = get_model_class(args.architecture)
    quant = get_quantization(config)
    with torch.device("meta"):
        model = cls(
            args,
            config.max_model_len,
            config.torch_dtype,
            quant.linear_method if quant else unquantized,
        )
    check_fits(model, config.torch_device)
    materialize(model, config.torch_device)
    if config.load_format == "dummy":
        tensors = dummy_tensors(cls.checkpoint_shapes(args), config.seed, config.torch_device)
    else:
        tensors = checkpoint_tensors(Path(config.model))
    load_weights(model, quant.checkpoint_tensors(tensors) if quant else tensors)
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.linear_method.process_weights_after_loading(module)
    set_kv_cache_scales(model, config, quant.kv_scales if quant else {})
    use_tuned_gemms(model, load_tuned_gemms(config))
    start_gemm_capture()
    return model.eval()


def materialize(model: nn.Module, device: torch.device) -> None:
    """Give every meta parameter uninitialized storage on ``device`` (keeping its attributes and
    sharing) and move every real buffer there."""
    new: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in new:
                # empty, not empty_like: empty_like on a meta tensor imports torch's symbolic
                # shapes (about 1 s of start-up)
                storage = torch.empty(param.shape, dtype=param.dtype, device=device)
                fresh = nn.Parameter(storage, requires_grad=False)
                fresh.__dict__.update(param.__dict__)
                new[id(param)] = fresh
            module._parameters[name] = new[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                if buf.is_meta:
                    raise RuntimeError(
                        f"buffer {name!r} of {type(module).__name__} was built on the meta device"
                    )
                module._buffers[name] = buf.to(device)


def load_weights(model: nn.Module, tensors: Iterable[CheckpointTensor]) -> None:
    """Stream checkpoint tensors into ``model``; raise ValueError naming every unexpected or
    missing tensor, or the first of the wrong shape or dtype."""
    mapping: dict[str, tuple[str, object]] = getattr(model, "packed_modules_mapping", {})
    fused_parts = {(fused, shard): part for part, (fused, shard) in mapping.items()}
    params = dict(model.named_parameters())
    expected = set()
    for name in params:
        module = name.split(".")[-2] if "." in name else ""
        shards = [shard for fused, shard in fused_parts if fused == module]
        expected |= {(name, shard) for shard in shards} if shards else {(name, None)}

    tied = getattr(getattr(model, "args", None), "tie_word_embeddings", False)
    loaded: set[tuple[str, object]] = set()
    unexpected: list[str] = []
    for ckpt_name, tensor, source in tensors:
        if ckpt_name.endswith(IGNORED_SUFFIXES) or (tied and ckpt_name == "lm_head.weight"):
            continue
        name, shard = _param_name(ckpt_name, mapping)
        param = params.get(name)
        if param is None:
            unexpected.append(ckpt_name)
            continue
        if is_fp8(tensor.dtype) and not is_fp8(param.dtype):
            raise ValueError(
                f"{source}: tensor {ckpt_name!r} is {tensor.dtype}: the checkpoint is "
                "fp8-quantized; load it with quantization='fp8'"
            )
        check_tensor(source, ckpt_name, tensor, param.dtype)
        if (name, shard) in loaded:
            raise ValueError(f"{source}: tensor {ckpt_name!r} appears twice in the checkpoint")
        weight_loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            if shard is None:
                weight_loader(param, tensor)
            else:
                weight_loader(param, tensor, shard)
        except ValueError as exc:
            raise ValueError(f"{source}: tensor {ckpt_name!r} {exc}") from None
        loaded.add((name, shard))

    missing = sorted(
        _checkpoint_name(name, shard, fused_parts) for name, shard in expected - loaded
    )
    problems = []
    if unexpected:
        problems.append(f"unexpected tensors (no such parameter): {_listing(unexpected)}")
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if problems:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: " + "; ".join(problems)
        )


def check_tensor(source: str, name: str, tensor: torch.Tensor, expected: torch.dtype) -> None:
    """Refuse a checkpoint tensor whose dtype the parameter cannot take (an integer or bool
    tensor for a float parameter, e5m2 where e4m3 is expected) or whose values are all NaN."""
    if expected.is_floating_point and not tensor.is_floating_point():
        raise ValueError(f"{source}: tensor {name!r} is {tensor.dtype}, but its parameter "
                         f"holds {expected}: not a weight of this model")
    if is_fp8(expected) and is_fp8(tensor.dtype) and tensor.dtype != expected:
        raise ValueError(f"{source}: tensor {name!r} is {tensor.dtype}, but its parameter "
                         f"holds {expected} (another fp8 format: re-export the checkpoint)")
    if not tensor.is_floating_point() or not tensor.numel():
        return
    flat = tensor.reshape(-1)
    if bool(torch.isnan(flat[:1].float()).item()):  # all NaN needs a NaN first: one read else
        values = flat if tensor.dtype.itemsize > 1 else flat.float()
        if bool(torch.isnan(values).all()):
            raise ValueError(f"{source}: tensor {name!r} is all NaN: the checkpoint is broken")


def check_fits(model: nn.Module, device: torch.device) -> None:
    """Refuse, before anything is allocated, a model (on the meta device) whose parameters alone
    need more than the device's memory, naming the largest parameter."""
    params = list(model.named_parameters())
    need = sum(p.numel() * p.element_size() for _, p in params)
    have = device_memory(device)
    if need > have:
        name, largest = max(params, key=lambda item: item[1].numel())
        raise ValueError(
            f"the model's weights need {need / 2**30:.1f} GiB but {device} has "
            f"{have / 2**30:.1f} GiB (largest: {name} {tuple(largest.shape)}); check config.json "
            "(vocab_size, hidden_size, intermediate_size, num_hidden_layers)"
        )


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: a GPU's total, the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor) -> None:
    """A parameter without a loader of its own (norms) takes the whole tensor, same shape."""
    copy_shard(param, loaded, None)


def _param_name(ckpt_name: str, mapping: dict[str, tuple[str, object]]) -> tuple[str, object]:
    """``model.layers.0.self_attn.k_proj.weight`` -> (``...qkv_proj.weight``, ``"k"``)."""
    parts = ckpt_name.split(".")
    for i, part in enumerate(parts):
        if part in mapping:
            fused, shard = mapping[part]
            return ".".join(parts[:i] + [fused] + parts[i + 1 :]), shard
    return ckpt_name, None


def _checkpoint_name(name: str, shard: object, fused_parts: dict[tuple[str, object], str]) -> str:
    if shard is None:
        return name
    module_path, leaf = name.rsplit(".", 1)
    parent, fused = module_path.rsplit(".", 1)
    return f"{parent}.{fused_parts[(fused, shard)]}.{leaf}"


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
