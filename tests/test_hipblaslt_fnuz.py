"""fnuz fp8: which GPUs compute in e4m3fnuz, and the conversion of e4m3fn checkpoints for them
(ROCm vLLM's: bit patterns reinterpreted, 0x80 to 0, scales doubled) against a numeric reference
computed by torch in both fp8 types."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from solidx.gradlib.device import device_fp8_dtype
from solidx.gradlib.dtypes import fp8_dtype_for_arch
from solidx.runtime.quantization.fp8 import Fp8LinearMethod
from solidx.runtime.quantization.fp8_math import dequantize, e4m3fn_to_e4m3fnuz, quantize

FN, FNUZ = torch.float8_e4m3fn, torch.float8_e4m3fnuz


def _every_finite_e4m3fn() -> torch.Tensor:
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    values = bits.view(FN)
    return values[~values.float().isnan()]


def test_every_value_keeps_its_meaning():
    weight = _every_finite_e4m3fn()
    assert weight.numel() == 254  # 0x7F and 0xFF are fn's NaNs
    scale = torch.tensor(0.37)
    converted, new_scale, none = e4m3fn_to_e4m3fnuz(weight, scale)
    assert converted.dtype == FNUZ and none is None
    assert new_scale.item() == pytest.approx(0.74)
    # torch's own fnuz decoding: each pattern is half its fn value (exactly: powers of two)
    assert torch.equal(converted.float() * 2, weight.float())
    assert torch.equal(dequantize(converted, new_scale), dequantize(weight, scale))
    assert not converted.float().isnan().any()


def test_minus_zero_becomes_zero_not_nan():
    weight = torch.tensor([0x80, 0x00, 0x01], dtype=torch.uint8).view(FN)
    converted, _, _ = e4m3fn_to_e4m3fnuz(weight, torch.tensor(1.0))
    assert converted.view(torch.uint8).tolist() == [0, 0, 1]
    assert weight.view(torch.uint8).tolist() == [0x80, 0, 1]  # the input is left alone


def test_a_quantized_gemm_is_unchanged():
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(32, 64, generator=gen), torch.randn(4, 64, generator=gen)
    qw, sw = quantize(w)
    input_scale = torch.tensor(0.05)
    fnuz_w, fnuz_sw, fnuz_si = e4m3fn_to_e4m3fnuz(qw, sw, input_scale)
    assert fnuz_si.item() == pytest.approx(0.1)
    reference = x @ dequantize(qw, sw).t()
    assert torch.allclose(x @ dequantize(fnuz_w, fnuz_sw).t(), reference, rtol=0, atol=1e-6)


def test_only_e4m3fn_is_converted():
    with pytest.raises(ValueError, match="float8_e4m3fn weight, not torch.float8_e4m3fnuz"):
        e4m3fn_to_e4m3fnuz(torch.zeros(2, dtype=FNUZ), torch.tensor(1.0))


@pytest.mark.parametrize("arch, dtype", [
    ("gfx942:sramecc+:xnack-", FNUZ), ("gfx940", FNUZ), ("gfx941", FNUZ),
    ("gfx950:sramecc+:xnack-", FN), ("gfx90a", FN), (None, FN), ("", FN),
])
def test_fp8_dtype_of_an_architecture(arch, dtype):
    assert fp8_dtype_for_arch(arch) == dtype


def test_device_fp8_dtype(monkeypatch):
    assert device_fp8_dtype("cpu") == FN
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(gcnArchName="gfx942:sramecc+:xnack-"))
    assert device_fp8_dtype(0) == FNUZ
    monkeypatch.setattr(torch.version, "hip", None)
    assert device_fp8_dtype(0) == FN


def _fp8_layer(method: Fp8LinearMethod, output_sizes: list[int], k: int) -> nn.Module:
    layer = nn.Module()
    layer.output_sizes = output_sizes
    method.create_weights(layer, k, output_sizes, torch.bfloat16)
    return layer


@pytest.mark.parametrize("static_input", [False, True])
def test_e4m3fn_checkpoint_loads_as_fnuz_on_fnuz_hardware(static_input: bool) -> None:
    """The load path an MI300 takes (``Fp8Config`` picks fnuz from the device): the checkpoint's
    e4m3fn weight becomes fnuz with doubled scales, the product it stands for unchanged, and the
    inputs are quantized to fnuz."""
    torch.manual_seed(0)
    fn, fnuz = torch.float8_e4m3fn, torch.float8_e4m3fnuz
    weight = (torch.randn(24, 32) * 100).clamp(-448, 448).to(fn)
    weight.view(torch.int8)[0, 0] = -128  # e4m3fn's -0.0: fnuz's NaN pattern, must become 0
    method = Fp8LinearMethod(serialized=True, static_input=static_input, fp8_dtype=fnuz)
    layer = _fp8_layer(method, [8, 16], 32)
    layer.weight.data.copy_(weight)
    layer.weight_scale.data.fill_(0.01)
    if static_input:
        layer.input_scale.data.fill_(0.02)
    method.process_weights_after_loading(layer)

    assert layer.weight.dtype == fnuz and not torch.isnan(layer.weight.float()).any()
    torch.testing.assert_close(layer.weight.float() * layer.weight_scale,
                               weight.float() * 0.01, rtol=0, atol=0)
    if static_input:
        assert float(layer.input_scale) == pytest.approx(0.04)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    ops = method.operands(layer, x, None)
    assert ops.x.dtype == fnuz
    torch.testing.assert_close((ops.x.float() * ops.scale_x), x.float(), rtol=0.07, atol=0.05)


def test_dynamic_quantization_targets_fnuz_directly() -> None:
    method = Fp8LinearMethod(serialized=False, static_input=False,
                             fp8_dtype=torch.float8_e4m3fnuz)
    layer = _fp8_layer(method, [16], 32)
    layer.weight.data.copy_(torch.randn(16, 32))
    method.process_weights_after_loading(layer)
    assert layer.weight.dtype == torch.float8_e4m3fnuz
    assert float(layer.weight.float().abs().max()) == pytest.approx(240.0)
