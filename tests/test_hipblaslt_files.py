"""ROCm's own tuned files, of every layout its gradlib has written, load into the runtime and map
to the hipblaslt / rocblas backends: index-only rows become index specs, apply to any device,
and are matched against the running library (here the ABI stand-ins) when their solutions are
built; an index the library lacks runs ``default`` with a warning naming it."""
from __future__ import annotations

import logging

import pytest
import torch
from rocm_standin.build import build

import solidx.gradlib.backends as backends
import solidx.gradlib.tuned as tuned
from solidx.gradlib.backends.default import DefaultSolution
from solidx.gradlib.backends.hipblaslt import HipBlasLtBackend, HipBlasLtSolution
from solidx.gradlib.backends.rocblas import RocBlasBackend, RocBlasSolution
from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.tuned import TunedGemms
from solidx.gradlib.tuned_file import read_tuned, select_rows

FNUZ, BF16, FP16 = torch.float8_e4m3fnuz, torch.bfloat16, torch.float16

# (layout, text, (libtype, spec) of each row)
ERAS = [
    ("gradlib, hipBLASLt only: M,N,K,solidx,soltimems",
     "M,N,K,solidx,soltimems\n48,8,32,2002,0.01\n",
     [("hipblaslt", "hipblaslt:index=2002")]),
    ("gradlib, solution index alone: M,N,K,solidx",
     "M,N,K,solidx\n48,8,32,1001\n",
     [("hipblaslt", "hipblaslt:index=1001")]),
    ("fp8 gemm tuner: M,N,K,indtype,outdtype,solidx,soltimes",
     "M,N,K,indtype,outdtype,solidx,soltimes\n"
     "64,8,32,torch.float8_e4m3fnuz,torch.bfloat16,3003,0.02\n",
     [("hipblaslt", "hipblaslt:index=3003")]),
    ("gradlib with libtype: M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems",
     "M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems\n"
     "48,8,32,True,torch.bfloat16,torch.bfloat16,hipblaslt,2002,0.03\n"
     "40,8,24,False,torch.float16,torch.float16,rocblas,22,0.02\n"
     "40,3,24,False,torch.float16,torch.float16,rocblas,33,0.02\n"
     "48,2,32,False,torch.bfloat16,torch.bfloat16,hipblaslt,3003,0.01\n",
     [("hipblaslt", "hipblaslt:index=2002"), ("rocblas", "rocblas:index=22"),
      ("rocblas", "rocblas:index=33"), ("hipblaslt", "hipblaslt:index=3003")]),
]


@pytest.mark.parametrize("layout, text, expected", ERAS, ids=[e[0] for e in ERAS])
def test_every_layout_maps_to_its_backend(tmp_path, layout, text, expected):
    path = tmp_path / "tuned.csv"
    path.write_text(text)
    rows = read_tuned(path, dtype=BF16, outdtype=BF16)
    assert [(r.libtype, r.solution) for r in rows] == expected
    assert {type(backends.get_backend(r.libtype)) for r in rows} <= {HipBlasLtBackend,
                                                                     RocBlasBackend}
    selection = select_rows(rows, "any GPU", 304, lambda libtype: f"{libtype}-1")
    assert selection.rows == rows  # no device, no build: ROCm's rows apply everywhere
    assert select_rows(rows, "any GPU", 304, lambda libtype: None).rows == []


def test_solidx_rows_keep_their_device_rules(tmp_path):
    path = tmp_path / "tuned.csv"
    path.write_text("M,N,K,bias,dtype,outdtype,libtype,solidx,soltimems,solution,device,"
                    "lib_version\n48,8,32,False,torch.bfloat16,torch.bfloat16,hipblaslt,1001,"
                    "0.01,hipblaslt:index=1001,MI300X,hipblaslt-1\n")
    rows = read_tuned(path)
    assert select_rows(rows, "MI300X", 304, lambda lib: "hipblaslt-1").rows == rows
    assert select_rows(rows, "MI250", 208, lambda lib: "hipblaslt-1").rows == []
    assert select_rows(rows, "MI300X", 304, lambda lib: "hipblaslt-2").rows == []


@pytest.fixture
def standin_registry(tmp_path_factory, monkeypatch):
    """The runtime's backend registry answering with backends bound to the stand-ins."""
    out = tmp_path_factory.mktemp("standin")
    made = {"hipblaslt": HipBlasLtBackend(library=str(build("hipblaslt", out)), device="cpu"),
            "rocblas": RocBlasBackend(library=str(build("rocblas", out)), device="cpu")}
    real = backends.get_backend

    def get_backend(libtype):
        return made.get(libtype) or real(libtype)

    monkeypatch.setattr(backends, "get_backend", get_backend)
    monkeypatch.setattr(tuned, "get_backend", get_backend)


def test_the_runtime_runs_rocm_rows_through_the_backends(tmp_path, standin_registry, caplog):
    path = tmp_path / "tuned.csv"
    path.write_text(ERAS[3][1])
    with caplog.at_level(logging.WARNING):
        gemms = TunedGemms.load(str(path), "cpu")
    hip = gemms.solution(GemmProblem(48, 8, 32, True, BF16, BF16))
    assert isinstance(hip, HipBlasLtSolution) and hip.solidx == 2002
    assert hip.spec.startswith("hipblaslt:index=2002,algo=")
    roc = gemms.solution(GemmProblem(40, 8, 24, False, FP16, FP16))
    assert isinstance(roc, RocBlasSolution) and roc.solidx == 22
    # the stand-in's 33 serves N >= 8 and its 3003 N >= 8: both rows fall back to default
    for problem in (GemmProblem(40, 3, 24, False, FP16, FP16),
                    GemmProblem(48, 2, 32, False, BF16, BF16)):
        assert isinstance(gemms.solution(problem), DefaultSolution)
    assert "2 rows loaded, 2 skipped" in gemms.summary
    assert "refuses solution 33" in caplog.text
    assert "index 3003 is not among the 2 heuristic results" in caplog.text


def test_fnuz_rows_of_the_fp8_tuner_run(tmp_path, standin_registry):
    path = tmp_path / "tuned.csv"
    path.write_text(ERAS[2][1])
    gemms = TunedGemms.load(str(path), "cpu")
    solution = gemms.solution(GemmProblem(64, 8, 32, False, FNUZ, BF16))
    assert isinstance(solution, HipBlasLtSolution) and solution.solidx == 3003
