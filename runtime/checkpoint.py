"""Where a model's checkpoint tensors come from: the safetensors files of a checkpoint folder,
or (``load_format="dummy"``) a synthetic checkpoint of seeded random tensors.

Either is a stream of ``CheckpointTensor``: the tensor's name in the checkpoint, the tensor, and
where it came from (a file name, or ``dummy``) for error messages. The loader streams them into
the model; the fp8 checkpoint formats read the same files' headers and rename or split tensors.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

CheckpointTensor = tuple[str, torch.Tensor, str]  # name, tensor, where it came from


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (those its index names, when it has one)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: not a safetensors index (a JSON object whose "
                             f"weight_map maps tensor names to files): {exc!r}") from None
        files = [folder / name for name in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names files that do not exist: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors files in {folder} (PyTorch .bin checkpoints are not "
            "supported: convert them to safetensors)"
        )
    return files


def checkpoint_tensors(folder: Path) -> Iterator[CheckpointTensor]:
    """Every tensor of a checkpoint folder's safetensors files, read to the CPU one at a time;
    an unreadable file (truncated, not safetensors) or tensor is a ValueError naming both."""
    for path in checkpoint_files(folder):
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file (truncated or "
                             f"corrupt?): {exc}") from None
        with handle as f:
            for name in f.keys():
                try:
                    tensor = f.get_tensor(name)
                except (SafetensorError, OSError, RuntimeError) as exc:
                    raise ValueError(f"{path}: tensor {name!r} cannot be read (truncated or "
                                     f"corrupt file?): {exc}") from None
                yield name, tensor, path.name


def dummy_tensors(
    shapes: dict[str, tuple[int, ...]], seed: int, device: torch.device
) -> Iterator[CheckpointTensor]:
    """Random tensors with spread enough for varied tokens: norms 1, matrices N(0, 1/in_features),
    biases N(0, 0.02²); each drawn from a generator seeded by ``seed`` and the tensor's name."""
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape, device=device), "dummy"
            continue
        generator = torch.Generator(device).manual_seed(
            seed * 1_000_003 + zlib.crc32(name.encode())
        )
        std = shape[1] ** -0.5 if len(shape) == 2 else 0.02
        yield name, torch.randn(shape, generator=generator, device=device) * std, "dummy"
