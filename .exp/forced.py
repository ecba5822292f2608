"""Experiment (not committed): tuned files that force Triton kernels on the 8B fp8 batch-1 problems."""
import sys, torch
from solidx.gradlib.backends.base import spec_hash
from solidx.gradlib.backends.triton import TritonBackend
from solidx.gradlib.device import device_identity
from solidx.gradlib.dtypes import FP8
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned_file import TunedRow, write_tuned
ident = device_identity("cuda")
SETS = {
 "gemv": {(4096, 4096): "triton:kernel=gemv,bn=1,bm=1,bk=2048,splitk=1,progs=0,warps=1",
          (6144, 4096): "triton:kernel=gemv,bn=1,bm=2,bk=2048,splitk=1,progs=0,warps=2",
          (28672, 4096): "triton:kernel=gemv,bn=1,bm=2,bk=1024,splitk=1,progs=0,warps=1",
          (4096, 14336): "triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=4,progs=0,warps=8,stages=4"},
 "stream": {(4096, 4096): "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=4,warps=4,stages=1",
            (6144, 4096): "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=8,warps=4,stages=1",
            (28672, 4096): "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=4,warps=4,stages=1",
            (4096, 14336): "triton:kernel=stream,bn=1,bm=8,bk=2048,progs=4,warps=4,stages=1"},
}
for name, specs in SETS.items():
    rows = [TunedRow(GemmProblem(m, 1, k, False, FP8, torch.bfloat16), "triton", spec_hash(s), 0.01,
                     solution=s, device=ident.name, sm_count=ident.sm_count,
                     lib_version=TritonBackend().version(), torch_version=torch.__version__)
            for (m, k), s in specs.items()]
    write_tuned(f"{sys.argv[1]}/forced_{name}.csv", rows)
