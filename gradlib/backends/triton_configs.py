"""The ``triton`` backend's config space: what a spec names, which configs can run a problem,
and the configs listed for it. Pure Python (no torch, no Triton): the solutions that launch the
kernels live in :mod:`solidx.gradlib.backends.triton`.

Five kernels, each named with its whole configuration in the spec:

* ``triton:kernel=stream,bn=4,bm=8,bk=512,progs=2,warps=4,stages=1``: the streaming skinny
  GEMM in fp32 FMAs (N ≤ bn ≤ 8; listed for N ≤ 4) and
* ``triton:kernel=streamdot,bn=16,bm=32,bk=256,progs=1,warps=4,stages=4``: the same with
  ``tl.dot`` (N ≤ bn = 16): a persistent grid of ``progs`` programs per SM, each owning whole
  rows and reducing all of K in registers (gemv's and skinny's ``stream`` mode in
  ``kernels.skinny_gemm``, after ROCm's wvSplitK);
* ``triton:kernel=gemv,bn=1,bm=8,bk=1024,splitk=1,progs=0,warps=4``: fp32 FMAs, split-K
  (N ≤ bn ≤ 8, listed with bn the next power of 2 of N);
* ``triton:kernel=skinny,bn=16,bm=64,bk=256,splitk=8,progs=2,warps=4,stages=4``: swap-AB
  ``tl.dot`` with split-K for decode (N ≤ bn ≤ 32);
* ``triton:kernel=tiled,bn=128,bm=128,bk=128,gm=8,splitk=1,warps=8,stages=3``: tiles of
  ``bn`` tokens × ``bm`` features, any N.

``bm`` tiles the output features (M), ``bn`` the tokens (N), ``bk`` the reduction (K);
``splitk`` > 1 splits K over programs and reduces in the same launch (no zeroing pass).
``progs`` > 0 launches that many programs per SM, each looping over work units (tile, split)
with a stride of the grid, like a persistent read of the weight; 0 launches one per unit.
For gemv and skinny ``solutions`` lists only ``progs=0``: on an H200 at decode sizes their
persistent grids measured 3–40% slower (each unit drains and refills the pipeline). The
stream kernels are persistent by design (``progs`` ≥ 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from solidx.gradlib.backends.base import WORKSPACE_BYTES, format_spec, parse_spec
from solidx.gradlib.problem import GemmProblem

FIELDS: dict[str, tuple[str, ...]] = {
    "stream": ("bn", "bm", "bk", "progs", "warps", "stages"),
    "streamdot": ("bn", "bm", "bk", "progs", "warps", "stages"),
    "gemv": ("bn", "bm", "bk", "splitk", "progs", "warps"),
    "skinny": ("bn", "bm", "bk", "splitk", "progs", "warps", "stages"),
    "tiled": ("bn", "bm", "bk", "gm", "splitk", "warps", "stages"),
}
"""The spec fields of each kernel, in spec order."""

SMEM_BYTES = 227 * 1024
"""Shared memory one program may use (H100/H200); pipelined tiles beyond it cannot launch."""

MAX_TILES = 1 << 16
"""Counters in the split-K workspace: a split-K launch may have at most this many output tiles
(:mod:`solidx.gradlib.kernels.splitk`)."""

_SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_SMS = 132  # listing heuristics assume an H100/H200-sized GPU; every config runs anywhere
_GEMV = (  # (bm, bk, warps): 64 weight bytes per thread and step (4 vectors of 16 bytes)
    (1, 2048, 1), (2, 1024, 1), (4, 512, 1), (2, 2048, 2), (4, 1024, 2), (8, 512, 2),
    (4, 2048, 4), (8, 1024, 4), (16, 512, 4),
)
_SKINNY = (  # (bm, bk, warps, stages), measured on an H200 at decode sizes
    (64, 128, 4, 3), (64, 128, 4, 5), (64, 128, 4, 8), (64, 256, 4, 3), (64, 256, 8, 4),
    (128, 256, 4, 3), (128, 128, 8, 3), (256, 128, 8, 3), (32, 256, 4, 4),
)
_STREAM = {  # bn -> (bm, bk in bytes, warps): at most 128 fp32 products per thread and step
    1: ((8, 2048, 4), (16, 1024, 4), (16, 2048, 8)),
    2: ((8, 1024, 4), (16, 512, 4), (8, 2048, 8)),
    4: ((4, 1024, 4), (8, 512, 4), (8, 1024, 8)),
}
_STREAM_DOT = (  # (bm, bk, warps, stages): 16-row blocks fill the SMs of small weights
    (16, 256, 4, 4), (32, 256, 4, 4), (32, 128, 4, 6), (64, 128, 4, 4), (64, 256, 8, 3),
)
_STREAM_PROGS = {"stream": (2, 4, 8), "streamdot": (1, 2, 4)}
"""Programs per SM: FMA programs keep one tile of loads in flight, dot ones ``stages`` tiles."""
_DOT_KERNELS = ("skinny", "tiled", "streamdot")
_FMA_KERNELS = ("gemv", "stream")
_TILED = (  # (bn, bm, bk, warps, stages); 128 x 256 tiles spill registers
    (64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 256, 128, 8, 3), (128, 64, 128, 4, 4),
    (128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (256, 128, 64, 8, 3), (256, 128, 128, 8, 3),
)


def partial_bytes(splitk: int, n: int, m: int) -> int:
    """Workspace bytes a split-K launch needs for its fp32 partials (0 without split-K)."""
    return 0 if splitk == 1 else splitk * n * m * 4


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _next_pow2(v: int) -> int:
    return 1 << (v - 1).bit_length()


@dataclass(frozen=True)
class TritonConfig:
    """One point of the config space (fields a kernel does not use stay at their default)."""

    kernel: str
    bn: int
    bm: int
    bk: int
    splitk: int = 1
    warps: int = 4
    stages: int = 1
    gm: int = 1
    progs: int = 0

    @property
    def spec(self) -> str:
        return format_spec("triton", {"kernel": self.kernel,
                                      **{f: getattr(self, f) for f in FIELDS[self.kernel]}})

    def max_tokens(self) -> int | None:
        """The largest N the kernel handles (None: any)."""
        return None if self.kernel == "tiled" else self.bn

    def smem_bytes(self, elt: int) -> int:
        """Shared memory of the pipelined dot kernels (FMA kernels keep tiles in registers)."""
        if self.kernel in _FMA_KERNELS:
            return 0
        return self.stages * (self.bn + self.bm) * self.bk * elt

    def error(self, problem: GemmProblem, n: int | None = None) -> str | None:
        """Why this config cannot run ``problem`` with ``n`` tokens (default ``problem.N``),
        or None when it can."""
        n = problem.N if n is None else n
        elt = problem.itemsize
        for name in ("bn", "bm", "bk"):
            if not _pow2(getattr(self, name)):
                return f"{name} must be a power of two"
        if self.warps not in (1, 2, 4, 8, 16) or min(self.stages, self.gm, self.splitk) < 1:
            return "warps must be 1, 2, 4, 8 or 16; stages, gm and splitk at least 1"
        if not 0 <= self.progs <= 64:
            return "progs (programs per SM, 0 for one per work unit) must be 0 to 64"
        if self.kernel.startswith("stream") and (self.progs < 1 or self.splitk != 1):
            return "stream kernels are persistent (progs >= 1) and never split K"
        dot = self.kernel in _DOT_KERNELS
        if self.bk * elt < 16 or (dot and (self.bk < 32 or self.bm < 16)):
            return "bk too small for 16-byte loads (dot kernels: bk >= 32, bm >= 16)"
        if not dot and self.bn > 8:
            return f"{self.kernel} handles at most 8 tokens (bn <= 8)"
        if dot and self.bn < 16:
            return "dot kernels need bn >= 16"
        if self.kernel == "streamdot" and self.bn != 16:
            return "streamdot handles 16 tokens (bn = 16)"
        limit = self.max_tokens()
        if limit is not None and n > limit:
            return f"N={n} exceeds bn={self.bn}"
        if self.smem_bytes(elt) > SMEM_BYTES:
            return f"needs {self.smem_bytes(elt)} bytes of shared memory (> {SMEM_BYTES})"
        if max(problem.M, n) * problem.K >= 2**31 or n * problem.M >= 2**31:
            return "operands of 2**31 elements or more need 64-bit offsets"
        k_blocks = _cdiv(problem.K, self.bk)
        per_split = _cdiv(k_blocks, self.splitk)
        if (self.splitk - 1) * per_split >= k_blocks:
            return f"splitk={self.splitk} leaves a split of K={problem.K} empty at bk={self.bk}"
        if self.splitk > 1:
            tiles = _cdiv(problem.M, self.bm) * _cdiv(n, self.bn)
            if partial_bytes(self.splitk, n, problem.M) > WORKSPACE_BYTES:
                return f"split-K partials exceed the {WORKSPACE_BYTES}-byte workspace"
            if tiles > MAX_TILES:
                return f"{tiles} output tiles exceed the {MAX_TILES} split-K counters"
        return None


def config_from_spec(spec: str) -> TritonConfig:
    """Parse a ``triton:`` spec (ValueError naming the spec if malformed)."""
    libtype, fields = parse_spec(spec)
    kernel = fields.pop("kernel", None)
    if libtype != "triton" or kernel not in FIELDS:
        raise ValueError(f"not a triton spec (kernel one of {', '.join(FIELDS)}): {spec!r}")
    if set(fields) != set(FIELDS[kernel]):
        raise ValueError(f"triton spec {spec!r} needs exactly the fields "
                         f"kernel,{','.join(FIELDS[kernel])}")
    try:
        values = {k: int(v) for k, v in fields.items()}
    except ValueError:
        raise ValueError(f"triton spec {spec!r} has a non-integer field") from None
    return TritonConfig(kernel=kernel, **values)


def checked_config(spec: str, problem: GemmProblem) -> TritonConfig:
    """The config a ``triton:`` spec names, if it can run ``problem``; ValueError saying why
    not otherwise."""
    config = config_from_spec(spec)
    error = config.error(problem)
    if error:
        raise ValueError(f"triton spec {spec!r} cannot run {problem}: {error}")
    return config


def _splits(problem: GemmProblem, tiles: int, bm: int, bk: int) -> list[int]:
    """split-K values worth listing: the two largest that still leave fewer programs than SMs
    (no second program on any SM), then the two smallest that fill every SM. Programs read
    at least 8 KiB of weight each: smaller ones cost more to start than they stream."""
    k_blocks = _cdiv(problem.K, bk)
    row_bytes = bm * problem.itemsize
    valid = [s for s in _SPLITS if (s - 1) * _cdiv(k_blocks, s) < k_blocks
             and (s == 1 or row_bytes * _cdiv(k_blocks, s) * bk >= 8192)]
    under = [s for s in valid if tiles * s < _SMS]
    over = [s for s in valid if tiles * s >= _SMS]
    return under[-2:] + over[:2]


def _stream_progs(kernel: str, tiles: int) -> list[int]:
    """Programs per SM worth listing for ``tiles`` row blocks: each that changes the grid."""
    options = _STREAM_PROGS[kernel]
    return [p for p in options if p == options[0] or tiles > _SMS * (p // 2)]


def _stream_configs(problem: GemmProblem) -> list[TritonConfig]:
    """The streaming kernels' configs: FMAs for N ≤ 4, ``tl.dot`` for N ≤ 16."""
    n, elt = problem.N, problem.itemsize
    out: list[TritonConfig] = []
    if n <= 4:
        bn = _next_pow2(n)
        for bm, bk_bytes, warps in _STREAM[bn]:
            for progs in _stream_progs("stream", _cdiv(problem.M, bm)):
                out.append(TritonConfig("stream", bn, bm, bk_bytes // elt, 1, warps, 1,
                                        progs=progs))
    if n <= 16:
        for bm, bk, warps, stages in _STREAM_DOT:
            while stages > 2 and stages * (16 + bm) * bk * elt > SMEM_BYTES - 32 * 1024:
                stages -= 1
            for progs in _stream_progs("streamdot", _cdiv(problem.M, bm)):
                out.append(TritonConfig("streamdot", 16, bm, bk, 1, warps, stages, progs=progs))
    return out


def candidate_configs(problem: GemmProblem) -> list[TritonConfig]:
    """The config space listed for a problem (every config valid for it)."""
    n, elt = problem.N, problem.itemsize
    out: list[TritonConfig] = _stream_configs(problem)
    if n <= 8:  # with PDL, gemv beat skinny at N = 1 on the 70B's qkv shard by 1.3 µs
        for bm, bk, warps in _GEMV:
            bk //= elt  # the same 16-byte vectors for 16-bit weights
            splits = _splits(problem, _cdiv(problem.M, bm), bm, bk)
            for s in splits[2:3] or splits[-1:]:  # the stream kernel covers the others' ground
                out.append(TritonConfig("gemv", _next_pow2(n), bm, bk, s, warps))
    if n <= 32:
        bn = 16 if n <= 16 else 32
        for bm, bk, warps, stages in _SKINNY:
            while stages > 2 and stages * (bn + bm) * bk * elt > SMEM_BYTES - 32 * 1024:
                stages -= 1
            for s in _splits(problem, _cdiv(problem.M, bm), bm, bk):
                out.append(TritonConfig("skinny", bn, bm, bk, s, warps, stages))
    else:
        for bn, bm, bk, warps, st in _TILED:
            if bn > max(64, _next_pow2(n)) or st * (bn + bm) * bk * elt > SMEM_BYTES - 32 * 1024:
                continue
            tiles = _cdiv(problem.M, bm) * _cdiv(n, bn)
            splits = [1] + [s for s in (2, 4) if tiles * s <= 4 * _SMS] if tiles < _SMS else [1]
            for s in splits:
                out.append(TritonConfig("tiled", bn, bm, bk, s, warps, st, gm=8))
    return list(dict.fromkeys(c for c in out if c.error(problem) is None))
