"""ROCm's fp8 tuning command, running solidx's tuner:

    python -m solidx.gradlib.fp8_gemm_tuner --input_file /tmp/fp8_shapes.csv \
        --tuned_file /tmp/tuned_fp8_16.csv

Files without dtype columns are fp8 (e4m3) operands with fp16 output, gradlib's defaults
(``--indtype``/``--outdtype`` change them). Options as :mod:`solidx.gradlib.gemm_tuner`.
"""
from __future__ import annotations

import sys

from solidx.gradlib.gemm_tuner import main

if __name__ == "__main__":
    sys.exit(main(indtype="fp8", outdtype="f16", prog="python -m solidx.gradlib.fp8_gemm_tuner"))
