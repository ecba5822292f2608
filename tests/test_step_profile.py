"""``solidx bench latency --profile``: the kernel-name table, the position and interval rules of
``runtime.bench.step_breakdown`` on synthetic events and traces, and the command end to end on
the tiny model on a CPU (a subprocess) and on a GPU."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from solidx.runtime.bench.step_breakdown import (
    HOST,
    PARTS,
    PATTERNS,
    Activity,
    breakdown,
    classify,
    from_trace,
    idle_between,
    label,
    split_time,
    top_level,
)

ROOT = Path(__file__).resolve().parents[1]

NAMES = {
    # cuBLAS / cuBLASLt on Hopper and Ampere, CUTLASS, gradlib's Triton GEMMs, torch on a CPU
    "nvjet_tst_64x8_64x16_4x1_v_bz_TNT": "GEMM",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1": "GEMM",
    "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn>": "GEMM",
    "void gemv2T_kernel_val<int, int, __nv_bfloat16, float, 128, 16, 4, 4, false>": "GEMM",
    "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>": "GEMM",
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, float, float>": "GEMM",
    "stream_dot_kernel": "GEMM",
    "skinny_kernel": "GEMM",
    "aten::linear": "GEMM",
    "aten::mm": "GEMM",
    # solidx's attention kernels, flash kernels (CUTLASS inside), the reference on a CPU
    "_paged_custom_kernel": "attention",
    "_reduce_kernel": "attention",
    "_store_kernel": "attention",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, cutlass::bfloat16_t>>":
        "attention",
    "aten::einsum": "attention",
    "aten::softmax": "attention",
    "aten::index_put_": "attention",
    # fused layers, fp8 input quantization and the framework's elementwise kernels
    "_rms_norm_kernel": "norms & elementwise",
    "_rotary_kernel": "norms & elementwise",
    "_silu_mul_kernel": "norms & elementwise",
    "_quantize_blocks": "norms & elementwise",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>":
        "norms & elementwise",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ArgMaxOps<float>>>":
        "norms & elementwise",
    "void at::native::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2, true>":
        "norms & elementwise",
    "aten::mul": "norms & elementwise",
    # communication: NCCL and PyTorch's symmetric-memory one-shot all-reduce
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)":
        "communication",
    "void c10d::symmetric_memory::one_shot_all_reduce_kernel<c10::BFloat16, 8, 16>":
        "communication",
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
    # copies the profiler records beside kernels
    "Memcpy HtoD (Pinned -> Device)": "copies",
    "Memset (Device)": "copies",
    "cudaGraphLaunch_something_else": "other",
}


@pytest.mark.parametrize("name,part", NAMES.items())
def test_kernel_names_fall_in_their_part(name: str, part: str) -> None:
    assert classify(name) == part


def test_every_pattern_is_exercised_by_a_name_and_every_part_is_shown() -> None:
    assert {part for part, _ in PATTERNS} <= set(NAMES.values())
    assert set(NAMES.values()) <= set(PARTS) and PARTS[-1] == HOST


def _launched_triton_kernels(folder: Path) -> set[str]:
    """The ``@triton.jit`` functions of ``folder`` that some module launches as ``k[grid](...)``
    (helpers called from kernels are not launched)."""
    jitted, launched = set(), set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(
                "triton.jit" in ast.unparse(d) for d in node.decorator_list
            ):
                jitted.add(node.name)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                    and isinstance(node.func.value, ast.Name)):
                launched.add(node.func.value.id)
    return jitted & launched


@pytest.mark.parametrize("folder,part", [
    ("gradlib/kernels", "GEMM"),
    ("runtime/attention", "attention"),
    ("runtime/layers/fused", "norms & elementwise"),
    ("runtime/quantization", "norms & elementwise"),
])
def test_solidx_triton_kernels_are_classified_by_their_folder(folder: str, part: str) -> None:
    kernels = _launched_triton_kernels(ROOT / folder) - {"read_floor_kernel"}  # a bench kernel
    assert kernels, folder
    # the all-reduce fused with the norm waits for the other ranks: it counts as communication
    expected = {name: "communication" if "all_reduce" in name else part for name in kernels}
    assert {name: classify(name) for name in kernels} == expected


def _acts(*names: str) -> list[Activity]:
    return [Activity(name, float(i), i + 0.5, float(i)) for i, name in enumerate(names)]


def test_the_last_run_of_gemms_is_the_lm_head_and_what_follows_it_sampling() -> None:
    step = _acts("Memcpy HtoD (Pinned -> Device)", "_rms_norm_kernel", "nvjet_qkv",
                 "_paged_custom_kernel", "nvjet_o", "_rms_norm_kernel", "nvjet_down",
                 "_rms_norm_kernel", "nvjet_lm_head", "ncclDevKernel_AllGather_RING_LL",
                 "splitKreduce_kernel", "reduce_kernel<ArgMaxOps>", "Memcpy DtoH")
    assert label(step) == [
        "copies", "norms & elementwise", "GEMM", "attention", "GEMM", "norms & elementwise",
        "GEMM", "norms & elementwise", "LM head", "communication", "LM head", "sampling",
        "copies"]
    assert label(_acts("_rms_norm_kernel", "Memcpy DtoH")) == ["norms & elementwise", "copies"]


def test_split_time_splits_overlap_evenly_and_clips_to_the_window() -> None:
    spans = [(0.0, 10.0, "a"), (5.0, 15.0, "b"), (20.0, 30.0, "a")]
    assert split_time(spans, 0.0, 40.0) == pytest.approx({"a": 17.5, "b": 7.5})
    assert split_time(spans, 8.0, 12.0) == pytest.approx({"a": 1.0, "b": 3.0})
    assert split_time(spans, 15.0, 20.0) == {}


def _union(spans: list[tuple[float, float, str]], start: float, end: float) -> float:
    total, reach = 0.0, start
    for s, e, _ in sorted(spans):
        s, e = max(s, reach), min(e, end)
        if e > s:
            total, reach = total + e - s, e
    return total


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 30), st.sampled_from("abc")),
                max_size=12),
       st.integers(0, 60), st.integers(1, 80))
def test_split_time_sums_to_the_union_of_the_spans(raw, start, length) -> None:
    spans = [(float(s), float(s + d), part) for s, d, part in raw]
    window = (float(start), float(start + length))
    assert sum(split_time(spans, *window).values()) == pytest.approx(_union(spans, *window))


def test_idle_between_steps_skips_empty_steps_and_clamps_overlap() -> None:
    a = [Activity("k", 0.0, 10.0, 0.0), Activity("k", 2.0, 12.0, 1.0)]
    b = [Activity("k", 20.0, 25.0, 13.0)]
    c = [Activity("k", 24.0, 30.0, 22.0)]  # launched early: runs before b ended
    assert idle_between([a, [], b, c]) == [8.0, 0.0]


def test_top_level_keeps_the_ops_no_other_op_contains() -> None:
    ops = [Activity("aten::linear", 0, 10, 0), Activity("aten::mm", 1, 9, 1),
           Activity("aten::add", 10, 12, 10), Activity("aten::empty", 10.5, 11, 10.5),
           Activity("aten::mul", 13, 14, 13)]
    assert [op.name for op in top_level(ops)] == ["aten::linear", "aten::add", "aten::mul"]


def _gpu_trace(step_starts: list[float], kernels: list[tuple[str, float, float, float]],
               step_len: float) -> list[dict]:
    """A Chrome trace as torch.profiler exports it: step annotations, one launch call per
    kernel (``cudaLaunchKernel`` at ``launched``) and the kernel, linked by correlation id."""
    events: list[dict] = [{"ph": "X", "cat": "user_annotation", "name": "step", "ts": s,
                           "dur": step_len, "tid": 1} for s in step_starts]
    for corr, (name, launched, start, dur) in enumerate(kernels):
        events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel",
                       "ts": launched, "dur": 1.0, "args": {"correlation": corr}})
        cat = "gpu_memcpy" if name.startswith("Memcpy") else "kernel"
        events.append({"ph": "X", "cat": cat, "name": name, "ts": start, "dur": dur,
                       "args": {"correlation": corr}})
    events.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 1e9,
                   "tid": 1})  # CPU ops are no GPU activity
    return events


def test_from_trace_splits_each_step_window_and_finds_the_idle_gaps() -> None:
    starts = [0.0, 100.0, 200.0, 300.0]  # step 0 is a warm-up, step 3 closes the last window
    kernels = []
    for s in starts:
        kernels += [("nvjet_down", s + 1, s + 10, 30.0),
                    ("ncclDevKernel_AllReduce", s + 2, s + 20, 10.0),  # beside the GEMM
                    ("_rms_norm_kernel", s + 3, s + 40, 10.0),
                    ("nvjet_lm_head", s + 4, s + 50, 20.0),
                    ("argmax", s + 5, s + 70, 5.0), ("Memcpy DtoH", s + 6, s + 75, 5.0)]
    kernels.append(("Memcpy DtoH", 190.0, 195.0, 10.0))  # launched by step 1, ends in step 2
    kernels.append(("nvjet_corrupt", 250.0, 250.0 - 1e8, 10.0))  # a start before its launch
    result = from_trace(_gpu_trace(starts, kernels, 90.0), "step", skip=1, on_gpu=True)
    assert result.on_gpu and result.steps == 2 and result.step_ms == pytest.approx(0.1)
    ms = {p.part: p.ms for p in result.parts}
    assert ms["norms & elementwise"] == pytest.approx(0.010)
    assert ms["GEMM"] == pytest.approx(0.025)  # 10 us shared with the all-reduce
    assert ms["communication"] == pytest.approx(0.005)
    assert ms["LM head"] == pytest.approx(0.020)
    assert ms["sampling"] == pytest.approx(0.005)  # argmax, after the LM head
    assert ms["copies"] == pytest.approx(0.010)  # the late copy: 5 us in each window
    assert ms[HOST] == pytest.approx(0.025)
    assert sum(ms.values()) == pytest.approx(result.step_ms)
    assert sum(p.percent for p in result.parts) == pytest.approx(100.0)
    counts = {p.part: p.count for p in result.parts}
    assert counts["GEMM"] == 1 and counts["copies"] == 1.5
    # step 1's last copy ends at 205, step 2 starts at 210; step 2 ends at 280, step 3 at 310
    assert result.idle_between_us == pytest.approx([5.0, 30.0])
    assert result.idle_max_us == pytest.approx(30.0) and result.idle_mean_us == 17.5


def test_from_trace_on_a_cpu_times_the_top_level_ops_of_the_steps_thread() -> None:
    events = [{"ph": "X", "cat": "user_annotation", "name": "step", "ts": s, "dur": 40.0,
               "tid": 7} for s in (0.0, 50.0, 100.0)]
    for s in (0.0, 50.0, 100.0):
        events += [
            {"ph": "X", "cat": "cpu_op", "name": "aten::linear", "ts": s + 1, "dur": 20.0,
             "tid": 7},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": s + 2, "dur": 15.0, "tid": 7},
            {"ph": "X", "cat": "cpu_op", "name": "aten::argmax", "ts": s + 25, "dur": 5.0,
             "tid": 7},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mul", "ts": s + 1, "dur": 40.0,
             "tid": 8},  # an intra-op worker thread: not the step's own work
        ]
    result = from_trace(events, "step", skip=0, on_gpu=False)
    ms = {p.part: p.ms for p in result.parts}
    assert not result.on_gpu and result.steps == 2 and "CPU ops" in result.source
    assert ms["LM head"] == pytest.approx(0.020) and ms["sampling"] == pytest.approx(0.005)
    assert ms[HOST] == pytest.approx(0.025)
    assert result.idle_between_us == pytest.approx([21.0, 21.0])


def test_breakdown_needs_a_counted_step_and_one_that_closes_it() -> None:
    with pytest.raises(ValueError, match="3 needed"):
        breakdown([], [0.0, 1.0], 2.0, skip=1, on_gpu=True, source="")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "solidx.cli.main", "bench", "latency", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_latency_profile_prints_the_table_and_saves_the_picture_and_figures(tmp_path) -> None:
    picture, figures = tmp_path / "out" / "step.png", tmp_path / "out" / "step.json"
    run = _run_cli("--model", "tiny-llama", "--input-len", "8", "--output-len", "8",
                   "--batch-size", "2", "--dtype", "float32", "--profile", str(picture),
                   "--output-json", str(tmp_path / "latency.json"))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "where a decode step goes" in out and "CPU ops (no GPU" in out
    step = float(re.search(r"step ([\d.]+) ms under the profiler", out).group(1))
    rows = {m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^    ([A-Za-z &]+?)\s+([\d.]+)\s+[\d.]+%", out, re.M)}
    assert set(rows) == set(PARTS)
    assert sum(rows.values()) == pytest.approx(step, abs=0.0005 * len(rows) + 0.0005)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(figures.read_text())
    parts = saved["breakdown"]["parts"]
    assert sum(p["ms"] for p in parts) == pytest.approx(saved["breakdown"]["step_ms"])
    assert sum(p["percent"] for p in parts) == pytest.approx(100.0)
    assert saved["batch_size"] == 2 and saved["context_lens"] == [11, 14]
    by_part = {p["part"]: p for p in parts}
    assert by_part["GEMM"]["count"] == 8 and by_part["LM head"]["count"] == 1  # 2 layers
    assert by_part["attention"]["ms"] > 0
    latency = json.loads((tmp_path / "latency.json").read_text())
    assert latency["step_profile"]["breakdown"]["steps"] == 4


def test_latency_profile_refuses_a_too_short_output_and_a_sweep() -> None:
    short = _run_cli("--model", "tiny-llama", "--output-len", "4", "--profile")
    assert short.returncode != 0 and "--output-len >= 5" in short.stderr
    sweep = _run_cli("--model", "tiny-llama", "--batch-sizes", "1,2", "--profile")
    assert sweep.returncode != 0 and "--profile needs a single --batch-size" in sweep.stderr


@pytest.mark.gpu
def test_profile_on_a_gpu_finds_the_kernels_of_a_graph_replayed_step(tmp_path) -> None:
    from solidx.runtime.bench.latency import bench_latency

    result = bench_latency("tiny-llama", input_len=16, output_len=16, batch_size=2,
                           profile=True, device="cuda")
    assert result.cuda_graphs
    b = result.step_profile.breakdown
    ms = {p.part: p.ms for p in b.parts}
    counts = {p.part: p.count for p in b.parts}
    assert b.on_gpu and b.steps == 8
    assert counts["GEMM"] >= 8 and counts["LM head"] >= 1 and counts["attention"] >= 2
    assert ms["other"] < 0.1 * b.step_ms, [n for n in b.names if n.part == "other"]
    assert sum(ms.values()) == pytest.approx(b.step_ms)
    assert len(b.idle_between_us) == 8 and b.idle_max_us >= 0
    picture, figures = result.step_profile.save(tmp_path / "p.png")
    assert picture.stat().st_size > 0 and json.loads(figures.read_text())["breakdown"]["on_gpu"]
