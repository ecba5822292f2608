"""ROCm's 16-bit tuning command, running solidx's tuner:

    python -m solidx.gradlib.gemm_tuner --input_file F --tuned_file G [--indtype f16 --outdtype f16]

``--indtype``/``--outdtype`` fill in shapes files without dtype columns (gradlib's ``M,N,K``);
the output dtype defaults to the input's, as in gradlib. :func:`main` also serves
``gradlib.fp8_gemm_tuner`` with fp8 defaults.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from solidx.gradlib.dtypes import parse_dtype
from solidx.gradlib.schema import CsvError
from solidx.gradlib.tune_options import ALL_BACKENDS, TuneOptions
from solidx.gradlib.tune_signals import TuneInterrupted, exit_now
from solidx.gradlib.tuner import tune

_ROCM_NAMES = {"f8": "fp8"}  # gradlib's spelling of fp8


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    """``"0,1"`` → ``(0, 1)``; ValueError for anything but comma-separated GPU indices."""
    if text is None or not text.strip():
        return None
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--gpus takes GPU indices like 0,1,2, not {text!r}") from None
    if any(g < 0 for g in gpus):
        raise ValueError(f"--gpus takes non-negative GPU indices, not {text!r}")
    return gpus


def parse_backends(text: str) -> tuple[str, ...]:
    """``"cublaslt,triton"`` → ``("cublaslt", "triton")`` (``default`` is always timed)."""
    names = dict.fromkeys(b.strip() for b in text.split(",") if b.strip())
    return tuple(b for b in names if b != "default")


def _parser(prog: str, indtype: str, outdtype: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Tune the GEMMs of a shapes file (solidx's tuner).")
    parser.add_argument("--input_file", "--input-file", required=True,
                        help="shapes file (M,N,K[,bias,dtype,outdtype,...])")
    parser.add_argument("--tuned_file", "--tuned-file", required=True,
                        help="tuned file to write or extend")
    parser.add_argument("--indtype", default=indtype,
                        help=f"operand dtype where the file has none (default {indtype})")
    parser.add_argument("--outdtype", default=outdtype,
                        help="output dtype where the file has none "
                             f"(default {outdtype or 'the operand dtype'})")
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS),
                        help="backends tried besides default")
    parser.add_argument("--margin", type=float, default=0.03,
                        help="speedup over default a winner needs (default 0.03)")
    parser.add_argument("--gpus", default=None, help="GPU indices to shard over, e.g. 0,1")
    parser.add_argument("--max-candidates", "--max_candidates", type=int, default=None,
                        help="at most this many candidates per backend and shape")
    return parser


def main(argv: Sequence[str] | None = None, *, indtype: str = "f16", outdtype: str | None = None,
         prog: str = "python -m solidx.gradlib.gemm_tuner") -> int:
    """Parse gradlib's options, tune, print the summary; 1 when a shape failed, 2 on bad input."""
    parser = _parser(prog, indtype, outdtype)
    args = parser.parse_args(argv)
    try:
        in_dtype = parse_dtype(_ROCM_NAMES.get(args.indtype, args.indtype))
        out_name = args.outdtype or args.indtype
        out_dtype = parse_dtype(_ROCM_NAMES.get(out_name, out_name))
        options = TuneOptions(backends=parse_backends(args.backends), margin=args.margin,
                              gpus=parse_gpus(args.gpus), max_candidates=args.max_candidates)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = tune(args.input_file, args.tuned_file, options, in_dtype, out_dtype)
    except (CsvError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except TuneInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        exit_now(exc.exit_code)
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
