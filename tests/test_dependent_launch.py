"""Programmatic dependent launch (``gradlib.kernels.dependent_launch``): off on CPU, and the
refusal of a bad ``SOLIDX_PDL``; on the device, chains of our kernels (RMSNorm that quantizes,
then a skinny GEMM) replayed in a CUDA graph give, bit for bit, what the same chain gives with
every kernel launched after the previous one has ended."""
from __future__ import annotations

import pytest
import torch

from solidx.gradlib.backends.triton import TritonBackend
from solidx.gradlib.kernels import dependent_launch
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem
from solidx.runtime.layers.fused.rms_norm import rms_norm
from solidx.runtime.quantization.input_quant import InputQuant

FP8 = torch.float8_e4m3fn


def test_off_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert not dependent_launch.enabled(cpu)
    assert dependent_launch.launch_options(cpu) == {"PDL": False}


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLIDX_PDL", "fast")
    with pytest.raises(ValueError, match=r"SOLIDX_PDL='fast': expected 0 \(off\) or 1 \(on\)"):
        dependent_launch.enabled(torch.device("cpu"))


@pytest.mark.gpu
def test_on_where_the_device_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    assert dependent_launch.enabled(cuda) == (torch.cuda.get_device_capability()[0] >= 9)
    monkeypatch.setenv("SOLIDX_PDL", "0")
    assert dependent_launch.launch_options(cuda) == {"PDL": False}


def _chain(x: torch.Tensor, norm: torch.Tensor, layers: list[tuple], fp8: bool) -> torch.Tensor:
    """``layers`` of (solution, weight, weight scale): RMSNorm (quantizing for fp8), then the
    GEMM, each layer's output the next one's input."""
    h = x
    for solution, w, scale_w in layers:
        if fp8:
            q = rms_norm(h, norm, 1e-5, quant=InputQuant(None, FP8))
            h = solution.run(GemmOperands(q.q, w, q.scale, scale_w, None))
        else:
            h = solution.run(GemmOperands(rms_norm(h, norm, 1e-5), w, None, None, None))
    return h


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tokens,spec", [
    (FP8, 1, "triton:kernel=stream,bn=1,bm=16,bk=1024,progs=2,warps=4,stages=1"),
    (FP8, 1, "triton:kernel=gemv,bn=1,bm=8,bk=1024,splitk=4,progs=0,warps=4"),
    (FP8, 4, "triton:kernel=streamdot,bn=16,bm=32,bk=256,progs=1,warps=4,stages=4"),
    (torch.bfloat16, 1, "triton:kernel=stream,bn=1,bm=16,bk=512,progs=4,warps=4,stages=1"),
    (torch.bfloat16, 8, "triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=4,progs=0,warps=4,"
                        "stages=3"),
], ids=lambda v: v.split(":")[1].split(",")[0] if isinstance(v, str) else str(v))
def test_graph_of_dependent_launches_matches_serial_launches(
        monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, tokens: int, spec: str) -> None:
    if not dependent_launch.enabled(torch.device("cuda")):
        pytest.skip("no programmatic dependent launch on this device")
    hidden, depth = 4096, 8
    problem = GemmProblem(hidden, tokens, hidden, False, dtype, torch.bfloat16)
    solution = TritonBackend().from_spec(spec, problem)
    gen = torch.Generator(device="cuda").manual_seed(0)
    layers = []
    for _ in range(depth):
        w = torch.randn(hidden, hidden, device="cuda", generator=gen) / hidden**0.5
        scale_w = w.abs().amax().float() / 448 if dtype == FP8 else None
        w = (w / scale_w).to(FP8) if dtype == FP8 else w.to(dtype)
        layers.append((solution, w, scale_w))
    norm = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)).to(torch.bfloat16)
    x = torch.randn(tokens, hidden, device="cuda", generator=gen).to(torch.bfloat16)
    fp8 = dtype == FP8

    monkeypatch.setenv("SOLIDX_PDL", "0")
    expected = _chain(x, norm, layers, fp8)
    monkeypatch.setenv("SOLIDX_PDL", "1")
    _chain(x, norm, layers, fp8)  # compile the PDL variants outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _chain(x, norm, layers, fp8)
    for _ in range(20):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)
    assert expected.abs().max() > 0
