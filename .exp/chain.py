"""Experiment (not committed): a GEMM's cost after a one-program producer (the input quant),
graph of CHAIN (producer, GEMM) pairs over rotating weights, minus the producers alone."""
import os, sys, torch
from solidx.gradlib.backends import solution_from_spec
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.operands import GemmOperands
from solidx.gradlib.problem import GemmProblem
from solidx.runtime.quantization.input_quant import quantize_input

SPECS = {
 (4096, 4096): ["default:", "triton:kernel=gemv,bn=1,bm=1,bk=2048,splitk=1,progs=0,warps=1",
                "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=4,warps=4,stages=1",
                "triton:kernel=gemv,bn=1,bm=8,bk=1024,splitk=1,progs=0,warps=4"],
 (6144, 4096): ["default:", "triton:kernel=gemv,bn=1,bm=2,bk=2048,splitk=1,progs=0,warps=2",
                "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=8,warps=4,stages=1"],
 (28672, 4096): ["default:", "triton:kernel=gemv,bn=1,bm=2,bk=1024,splitk=1,progs=0,warps=1",
                 "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=4,warps=4,stages=1"],
 (4096, 14336): ["default:", "triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=4,progs=0,warps=8,stages=4",
                 "triton:kernel=gemv,bn=1,bm=8,bk=1024,splitk=4,progs=0,warps=4",
                 "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=4,warps=4,stages=1"],
}
CHAIN = 24
dev = torch.device("cuda")
l2 = torch.cuda.get_device_properties(dev).L2_cache_size

def timed(fn, reps=15):
    g = torch.cuda.CUDAGraph()
    fn(); torch.cuda.synchronize()
    with torch.cuda.graph(g):
        fn()
    g.replay(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        s.record(); g.replay(); e.record(); e.synchronize(); out.append(s.elapsed_time(e))
    out.sort(); return out[len(out)//2] * 1e3 / CHAIN

mode = "pdl=" + os.environ.get("SOLIDX_PDL", "1")
for (m, k), specs in SPECS.items():
    p = GemmProblem(m, 1, k, False, FP8, torch.bfloat16)
    copies = max(2, -(-4 * l2 // (m * k)))
    ws = [(torch.randn(m, k, device=dev) / 8).to(FP8) for _ in range(copies)]
    sw = torch.tensor(0.01, device=dev)
    src = [torch.randn(1, k, device=dev, dtype=torch.bfloat16) for _ in range(CHAIN)]
    def producers():
        for i in range(CHAIN):
            quantize_input(src[i], None)
    base = timed(producers)
    for spec in specs:
        sol = solution_from_spec(spec, p)
        def pairs():
            for i in range(CHAIN):
                q, s = quantize_input(src[i], None)
                sol.run(GemmOperands(q, ws[i % copies], s, sw, None))
        def alone():
            q, s = quantize_input(src[0], None)
            for i in range(CHAIN):
                sol.run(GemmOperands(q, ws[i % copies], s, sw, None))
        both = timed(pairs); solo = timed(alone)
        print(f"{mode:8} {m:5}x{k:<5} producer {base:5.2f}  pair {both:6.2f}  gemm after producer {both-base:6.2f}  back-to-back {solo:6.2f}  {spec}", flush=True)
