"""The all-reduce fused with the residual add and RMSNorm (``all_reduce_rms_norm``) against the
all-reduce followed by ``rms_norm``: the same bits, call after call.

The CPU runs the kernel under TRITON_INTERPRET=1 with a group of one (the interpreter runs one
program at a time, so ranks that wait for each other cannot share it). On a GPU (``-m gpu``) a
group of 2 or 4 ranks is simulated on the one device: each rank's buffers are ordinary tensors
of that device and each rank launches on a stream of its own, the ranks skewed by sleeps, eager
and replayed from CUDA graphs; that runs the kernel's barrier and slot protocol for real, over
local memory instead of NVLink. The symmetric-memory set-up itself runs in a group of one.
Several GPUs are needed for the rest (tests/test_tp_gpu.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from solidx.runtime.layers.fused.all_reduce_rms_norm import (
    NUM_PROGRAMS,
    PeerBuffers,
    all_reduce_rms_norm,
)
from solidx.runtime.layers.fused.rms_norm import rms_norm
from solidx.runtime.quantization.input_quant import InputQuant, QuantizedInput

ROOT = Path(__file__).resolve().parents[1]
FP8 = torch.float8_e4m3fn
QUANTS = {"none": None, "dynamic": InputQuant(None, FP8),
          "static": InputQuant(torch.tensor(0.02), FP8)}


def simulated_group(world: int, slot_bytes: int, dtype: torch.dtype,
                    device: str) -> list[PeerBuffers]:
    """``world`` ranks' views of buffers that all live on ``device``."""
    staging = [torch.zeros(2 * slot_bytes // dtype.itemsize, dtype=dtype, device=device)
               for _ in range(world)]
    flags = [torch.zeros(NUM_PROGRAMS * world, dtype=torch.int32, device=device)
             for _ in range(world)]
    data_ptrs = torch.tensor([t.data_ptr() for t in staging], device=device)
    flag_ptrs = torch.tensor([t.data_ptr() for t in flags], device=device)
    return [PeerBuffers(rank, world, dtype, slot_bytes, data_ptrs, flag_ptrs,
                        torch.zeros(NUM_PROGRAMS, dtype=torch.int32, device=device),
                        owned=(*staging, *flags)) for rank in range(world)]


def reference(partials: list[torch.Tensor], residual: torch.Tensor, weight: torch.Tensor,
              quant: InputQuant | None):
    """The all-reduce (float32 sum in rank order, rounded), then the norm kernel."""
    total = partials[0].float()
    for partial in partials[1:]:
        total = total + partial.float()
    return rms_norm(total.to(residual.dtype), weight, 1e-5, residual, quant)


def assert_same(got, want) -> None:
    (out, res), (ref, ref_res) = got, want
    assert torch.equal(res, ref_res)
    if isinstance(ref, QuantizedInput):
        assert isinstance(out, QuantizedInput) and out.dtype == ref.dtype
        assert torch.equal(out.q.view(torch.uint8), ref.q.view(torch.uint8))
        assert torch.equal(out.scale, ref.scale)
    else:
        assert out.dtype == ref.dtype and torch.equal(out, ref)


@pytest.mark.parametrize("quant", QUANTS)
def test_group_of_one_matches_the_norm_call_after_call(quant: str) -> None:
    peers, = simulated_group(1, 8192, torch.bfloat16, "cpu")
    weight = torch.rand(72, dtype=torch.bfloat16) + 0.5
    for calls, rows in enumerate([1, 3, NUM_PROGRAMS + 5, 1, 2], start=1):
        x = torch.randn(rows, 72, dtype=torch.bfloat16)
        residual = torch.randn(rows, 72, dtype=torch.bfloat16)
        got = all_reduce_rms_norm(x, residual, weight, 1e-5, peers, QUANTS[quant])
        assert_same(got, reference([x], residual, weight, QUANTS[quant]))
        assert peers.epochs.tolist() == [calls] * NUM_PROGRAMS  # every program counts every call
        flags = peers.owned[1]
        assert flags[0] == calls and flags[min(rows, NUM_PROGRAMS) - 1] == calls


def test_what_does_not_fit_is_refused() -> None:
    peers, = simulated_group(1, 1024, torch.bfloat16, "cpu")
    weight = torch.ones(64, dtype=torch.bfloat16)
    assert peers.fits(torch.zeros(8, 64, dtype=torch.bfloat16))
    assert not peers.fits(torch.zeros(9, 64, dtype=torch.bfloat16))  # 1152 bytes > 1024
    assert not peers.fits(torch.zeros(8, 64, dtype=torch.float32))
    assert not peers.fits(torch.zeros(0, 64, dtype=torch.bfloat16))
    big = torch.zeros(9, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="does not fit the staging buffers"):
        all_reduce_rms_norm(big, big, weight, 1e-5, peers)
    with pytest.raises(ValueError, match="at most 8 ranks"):
        PeerBuffers(0, 9, torch.bfloat16, 1024, *[torch.zeros(1)] * 3)


@pytest.mark.gpu
@pytest.mark.parametrize("world", [2, 4])
def test_simulated_ranks_on_one_gpu(world: int) -> None:
    """Llama-3-8B rows (4096), batch 1 to 128, every quantization, ranks skewed by sleeps:
    each rank's result equals the reference bit for bit, eagerly and from CUDA graphs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    device, hidden = "cuda", 4096
    group = simulated_group(world, 1 << 20, torch.bfloat16, device)
    streams = [torch.cuda.Stream() for _ in range(world)]
    weight = torch.rand(hidden, dtype=torch.bfloat16, device=device) + 0.5
    cases = [(rows, quant) for rows in (1, 2, 7, 32, 33, 128) for quant in QUANTS]
    quants = {name: None if q is None else InputQuant(
        None if q.scale is None else q.scale.to(device), q.dtype) for name, q in QUANTS.items()}

    def inputs(rows: int):
        partials = [torch.randn(rows, hidden, dtype=torch.bfloat16, device=device)
                    for _ in range(world)]
        return partials, torch.randn(rows, hidden, dtype=torch.bfloat16, device=device)

    def run_all(calls, results, sleep_rank: int | None):
        torch.cuda.synchronize()
        for rank in range(world):
            with torch.cuda.stream(streams[rank]):
                for n, (partials, residual, quant) in enumerate(calls):
                    if rank == sleep_rank and n % 3 == 0:
                        torch.cuda._sleep(200_000)  # this rank arrives late
                    results[rank].append(all_reduce_rms_norm(
                        partials[rank], residual, weight, 1e-5, group[rank], quants[quant]))
        torch.cuda.synchronize()

    calls = [(*inputs(rows), quant) for rows, quant in cases]
    results = [[] for _ in range(world)]
    run_all(calls, results, sleep_rank=world - 1)
    for rank in range(world):
        for (partials, residual, quant), got in zip(calls, results[rank]):
            assert_same(got, reference(partials, residual, weight, quants[quant]))

    # graphs: each rank captures 5 calls on its stream; the graphs are replayed side by side
    calls = [(*inputs(rows), quant) for rows, quant in cases[::4]]
    graphs, captured = [], [[] for _ in range(world)]
    for rank in range(world):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=streams[rank]):
            for partials, residual, quant in calls:
                captured[rank].append(all_reduce_rms_norm(
                    partials[rank], residual, weight, 1e-5, group[rank], quants[quant]))
        graphs.append(graph)
    for replay in range(5):
        for partials, residual, _ in calls:  # new inputs, in place
            for partial in partials:
                partial.normal_()
            residual.normal_()
        torch.cuda.synchronize()
        for rank in range(world):
            with torch.cuda.stream(streams[rank]):
                if rank == replay % world:
                    torch.cuda._sleep(500_000)
                graphs[rank].replay()
        torch.cuda.synchronize()
        for rank in range(world):
            for (partials, residual, quant), got in zip(calls, captured[rank]):
                assert_same(got, reference(partials, residual, weight, quants[quant]))


@pytest.mark.gpu
def test_symmetric_memory_set_up_in_a_group_of_one(tmp_path: Path) -> None:
    """The production buffers (``CustomAllReduce``) over NCCL and symmetric memory, in a
    process of its own (a process group changes the rest of a test session)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    script = textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from solidx.runtime.custom_all_reduce import CustomAllReduce
        from solidx.runtime.layers.fused.all_reduce_rms_norm import all_reduce_rms_norm
        from solidx.runtime.layers.fused.rms_norm import rms_norm
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", store=dist.FileStore("{tmp_path}/store", 1), rank=0,
                                world_size=1, device_id=torch.device("cuda", 0))
        custom = CustomAllReduce.create(dist.group.WORLD, torch.device("cuda", 0),
                                        torch.bfloat16)
        assert custom is not None, "custom all-reduce refused"
        assert custom.peers is None  # until asked for
        peers = custom.enable_fused()
        assert custom.enable_fused() is peers
        assert peers.world == 1 and peers.data_ptrs.tolist() == [peers.owned[0].data_ptr()]
        weight = torch.rand(4096, dtype=torch.bfloat16, device="cuda") + 0.5
        for rows in (1, 16, 128, 1):
            x, r = (torch.randn(rows, 4096, dtype=torch.bfloat16, device="cuda")
                    for _ in range(2))
            out, res = all_reduce_rms_norm(x, r, weight, 1e-5, peers)
            ref, ref_res = rms_norm(x, weight, 1e-5, r)
            assert torch.equal(out, ref) and torch.equal(res, ref_res)
        assert peers.epochs.tolist() == [4] * 32
        dist.destroy_process_group()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout + result.stderr)
