"""cuBLASLt algorithm configurations: what a spec names, and the order candidates are tried in.

A configuration is an algorithm id plus its tile, stages, split-K factor, reduction scheme, CTA
swizzle, custom option, cluster shape and inner shape. A spec names the whole configuration,
e.g. ``cublaslt:id=66,tile=20,stages=15,splitk=4,red=1,swizzle=0,custom=0,cluster=0``
(``inner=`` follows only when the kernel has a non-default inner shape).

Candidates, best guesses first: the heuristic's picks; their neighbours (other split-K factors,
reduction schemes, CTA swizzle, custom options and cluster shapes of the same kernel, fewest
changes first); every (algo id, tile, stages) the library's capabilities list; then their
neighbours. Pure Python (no torch, no library): the library calls that fill these in live in
:mod:`solidx.gradlib.backends.cublaslt_plan`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import chain, zip_longest
from typing import Iterable, Iterator

from solidx.gradlib.backends.base import format_spec, parse_spec

LIBTYPE = "cublaslt"
SPLITK_FACTORS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
MIN_K_PER_SPLIT = 128
REDUCTION_SCHEMES = (1, 2, 4)
"""cublasLtReductionScheme_t, bits of a mask (NONE is 0): INPLACE, COMPUTE_TYPE, OUTPUT_TYPE."""

_SPEC_KEYS = ("id", "tile", "stages", "splitk", "red", "swizzle", "custom", "cluster", "inner")


@dataclass(frozen=True)
class AlgoConfig:
    """One cuBLASLt algorithm configuration; fields in spec order (``algo_id`` is ``id=``)."""

    algo_id: int
    tile: int = 0
    stages: int = 0
    splitk: int = 1
    red: int = 0
    swizzle: int = 0
    custom: int = 0
    cluster: int = 0
    inner: int = 0

    @property
    def spec(self) -> str:
        fields = dict(zip(_SPEC_KEYS, dataclasses.astuple(self)))
        if not self.inner:
            del fields["inner"]
        return format_spec(LIBTYPE, fields)

    @classmethod
    def parse(cls, spec: str) -> AlgoConfig:
        """The configuration a spec names; ValueError naming the spec if it is malformed."""
        libtype, fields = parse_spec(spec)
        if libtype != LIBTYPE:
            raise ValueError(f"not a {LIBTYPE} spec: {spec!r}")
        missing = [key for key in _SPEC_KEYS[:-1] if key not in fields]
        unknown = [key for key in fields if key not in _SPEC_KEYS]
        if missing or unknown:
            raise ValueError(
                f"cublaslt spec {spec!r}: missing fields {missing}, unknown fields {unknown} "
                f"(expected {','.join(_SPEC_KEYS[:-1])}[,inner])"
            )
        values = []
        for key in _SPEC_KEYS:
            text = fields.get(key, "0")
            if not text.isdigit():
                raise ValueError(f"cublaslt spec {spec!r}: {key}={text!r} is not an integer >= 0")
            values.append(int(text))
        config = cls(*values)
        if config.splitk < 1:
            raise ValueError(f"cublaslt spec {spec!r}: splitk must be at least 1")
        return config


@dataclass(frozen=True)
class AlgoCaps:
    """What one algorithm id supports for a type combination (AlgoCapGetAttribute)."""

    tiles: tuple[int, ...]
    stages: tuple[int, ...]
    splitk: bool
    red_mask: int
    swizzle: bool
    custom_max: int
    epilogue_mask: int


def _distance(a: AlgoConfig, b: AlgoConfig) -> int:
    """How many of split-K (with its reduction scheme), swizzle, custom option and cluster
    shape differ."""
    return ((a.splitk, a.red) != (b.splitk, b.red)) + (a.swizzle != b.swizzle) + (
        a.custom != b.custom) + (a.cluster != b.cluster)


def neighbours(
    config: AlgoConfig, caps: AlgoCaps, k: int, clusters: tuple[int, ...] = ()
) -> list[AlgoConfig]:
    """The same kernel (id, tile, stages, inner shape) with every split-K factor (each split at
    least ``MIN_K_PER_SPLIT`` deep), reduction scheme, swizzle, custom option and cluster shape
    (its own or one of ``clusters``), fewest changes first."""
    splits = (1,)
    if caps.splitk:
        splits += tuple(s for s in SPLITK_FACTORS if k // s >= MIN_K_PER_SPLIT)
    found = []
    for splitk in splits:
        reds = (0,) if splitk == 1 else tuple(r for r in REDUCTION_SCHEMES if caps.red_mask & r)
        for red in reds:
            for swizzle in (0, 1) if caps.swizzle else (0,):
                for custom in range(caps.custom_max + 1):
                    for cluster in dict.fromkeys((config.cluster, *clusters)):
                        found.append(dataclasses.replace(
                            config, splitk=splitk, red=red, swizzle=swizzle, custom=custom,
                            cluster=cluster))
    return sorted(found, key=lambda c: _distance(c, config))


def bases(algo_id: int, caps: AlgoCaps) -> Iterator[AlgoConfig]:
    """Every (tile, stages) of an algorithm id, without split-K."""
    for tile in caps.tiles or (0,):
        for stages in caps.stages or (0,):
            yield AlgoConfig(algo_id, tile, stages)


def round_robin(iterables: Iterable[Iterable[AlgoConfig]]) -> Iterator[AlgoConfig]:
    for group in zip_longest(*iterables):
        yield from (config for config in group if config is not None)


def candidate_configs(
    heuristic: list[AlgoConfig], caps: dict[int, AlgoCaps], k: int
) -> Iterator[AlgoConfig]:
    """Configurations to try, best guesses first (may repeat; the caller deduplicates): the
    heuristic's picks; their neighbours (also with the cluster shapes of the other picks); every
    id's bases, the heuristic's ids first; then the bases' neighbours. Kernels and ids take
    turns so that a bounded list still covers all of them."""
    yield from heuristic
    clusters = tuple(dict.fromkeys(c.cluster for c in heuristic))
    yield from round_robin(
        neighbours(c, caps[c.algo_id], k, clusters) for c in heuristic if c.algo_id in caps)
    picked = {c.algo_id for c in heuristic}
    ids = sorted(caps, key=lambda i: i not in picked)
    yield from round_robin(bases(i, caps[i]) for i in ids)
    yield from round_robin(_bases_and_neighbours(i, caps[i], k) for i in ids)


def _bases_and_neighbours(algo_id: int, caps: AlgoCaps, k: int) -> Iterator[AlgoConfig]:
    return chain.from_iterable(neighbours(b, caps, k) for b in bases(algo_id, caps))
