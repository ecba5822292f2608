"""gradlib: GEMM problems, solution backends, timing, the tuner and the CSV schemas.

Imports nothing of solidx's other packages: a tuning team runs it with nothing but shapes.
"""
from solidx.gradlib.problem import GemmProblem

__all__ = ["GemmProblem"]
