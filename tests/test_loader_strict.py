"""The loader takes no wrong weights and crashes on no bad file (issue 18 item 4): dtype per
tensor, all-NaN tensors, truncated files, config values checked before any allocation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from solidx.runtime.config import Config
from solidx.runtime.loader import load_model, load_weights
from solidx.shape_capture.model_args import ModelArgs
from torch import nn

from tests.checkpoints import make_checkpoint

EMBED = "model.embed_tokens.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("strict") / "llama", "llama-gqa")


def _copy(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "ckpt"))


def _edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _load(folder: Path, **kwargs) -> nn.Module:
    return load_model(Config(model=str(folder), device="cpu", **kwargs))


def test_the_good_checkpoint_loads(base: Path) -> None:
    assert _load(base) is not None


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int32])
def test_integer_or_bool_weights_in_a_float_checkpoint(base: Path, tmp_path: Path,
                                                       dtype: torch.dtype) -> None:
    folder = _copy(base, tmp_path)
    _edit_tensors(folder, lambda t: t.__setitem__(DOWN, t[DOWN].to(dtype)))
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{DOWN}' is {dtype}, "
                                         "but its parameter holds torch.float32"):
        _load(folder)


def test_all_nan_weights_are_refused(base: Path, tmp_path: Path) -> None:
    folder = _copy(base, tmp_path)
    _edit_tensors(folder, lambda t: t[EMBED].fill_(float("nan")))
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{EMBED}' is all NaN"):
        _load(folder)


def test_e5m2_where_e4m3_is_expected() -> None:
    layer = nn.Linear(16, 16, bias=False)
    layer.weight = nn.Parameter(torch.zeros(16, 16, dtype=torch.float8_e4m3fn),
                                requires_grad=False)
    weight = torch.randn(16, 16).to(torch.float8_e5m2)
    with pytest.raises(ValueError, match="ckpt.safetensors: tensor 'weight' is torch.float8_e5m2,"
                                         " but its parameter holds torch.float8_e4m3fn"):
        load_weights(layer, [("weight", weight, "ckpt.safetensors")])
    load_weights(layer, [("weight", weight.to(torch.float8_e4m3fn), "ckpt.safetensors")])


def test_a_truncated_safetensors_file_is_one_clear_error(base: Path, tmp_path: Path) -> None:
    folder = _copy(base, tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path}: not a readable safetensors file"):
        _load(folder)
    path.write_bytes(data[:7])
    with pytest.raises(ValueError, match=rf"{path}: not a readable safetensors file"):
        _load(folder)


@pytest.mark.parametrize("field, value, message", [
    ("num_attention_heads", 0, "field num_attention_heads=0 must be an integer in 1.."),
    ("num_hidden_layers", -3, "field num_hidden_layers=-3 must be an integer in 1.."),
    ("vocab_size", 10**12, "field vocab_size=1000000000000 must be an integer in 1.."),
    ("hidden_size", 64.5, "field hidden_size=64.5 must be an integer"),
    ("num_key_value_heads", 3, "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    ("rms_norm_eps", -1.0, "field rms_norm_eps=-1.0 must be a finite number > 0"),
    ("intermediate_size", None, "field intermediate_size is missing"),
])
def test_config_values_are_checked_with_the_field_named(base: Path, tmp_path: Path, field: str,
                                                        value: object, message: str) -> None:
    folder = _copy(base, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{folder}/config.json: {message}"):
        Config(model=str(folder), device="cpu")


def test_a_model_bigger_than_memory_is_refused_before_allocating(base: Path,
                                                                 tmp_path: Path) -> None:
    folder = _copy(base, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 2**31 - 1  # 2**31 x 64 float32: 512 GiB of embedding
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"weights need \d+\.\d GiB but cpu has .*largest: "
                                         r"model.embed_tokens.weight \(2147483647, 64\)"):
        _load(folder)


@pytest.mark.parametrize("flag", ["num_gpu_blocks_override", "kv_cache_memory_bytes"])
def test_negative_block_and_cache_overrides(base: Path, flag: str) -> None:
    with pytest.raises(ValueError, match=f"{flag} \\(--{flag.replace('_', '-')}\\) must be >= 1"):
        Config(model=str(base), device="cpu", **{flag: -1})


def test_presets_name_themselves() -> None:
    with pytest.raises(ValueError, match="preset x: field vocab_size=0"):
        ModelArgs.from_hf({"num_attention_heads": 4, "hidden_size": 64, "vocab_size": 0},
                          "preset x")
