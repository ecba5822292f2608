"""The tensor-parallel all-reduce fused with the residual add and RMSNorm after it: one Triton
kernel per sublayer of a decode step, in place of the one-shot all-reduce and the norm kernel.

Each rank holds a staging buffer and a flag array that every rank of its group can address
(PyTorch symmetric memory on GPUs of one host: :class:`PeerBuffers`). A call is one launch of
``NUM_PROGRAMS`` programs on each rank; program ``b`` owns rows ``b, b + NUM_PROGRAMS, ...``:

1. it copies its rows of this rank's partial sum ``x`` into this rank's staging buffer;
2. it signals every rank (flag ``[b, rank]`` in their flag array := this call's epoch, a
   system-scope release after the program's stores) and waits for every rank's signal in its
   own array (acquire);
3. it reads its rows from every rank's buffer, sums them in float32 in rank order (every rank
   computes the same bits) and rounds the sum to the input dtype, which is what an all-reduce
   returns; then adds the residual and normalises as ``rms_norm`` does, quantizing for the fp8
   layer it feeds where the scale allows.

One barrier per call, none at the end: the buffer has two slots used in turn (the epoch's
parity), and a rank can only reach the call after next once every rank has passed the next
call's barrier, i.e. finished this one (kernels on a stream run in order; with programmatic
dependent launch, :mod:`gradlib.kernels.dependent_launch`, each one still waits for the one
before). Epochs count calls per program, in device memory, so CUDA graphs replay them; every
rank makes the same calls, as for any collective. No NVLink multicast is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from solidx.gradlib.kernels import dependent_launch
from solidx.runtime.layers.fused.rms_norm import TL_DTYPES, add_and_normalize, rows_of
from solidx.runtime.quantization.input_quant import (
    MIN_SCALE,
    InputQuant,
    QuantizedInput,
    quantize_one_row,
    quantize_values,
)

NUM_PROGRAMS = 32  # the fixed grid: program b's epoch counts every call
MAX_WORLD = 8
# What a program stores: the output; the output quantized (static scale); one row quantized
# with its own dynamic scale.
PLAIN = tl.constexpr(0)
STATIC = tl.constexpr(1)
ONE_ROW = tl.constexpr(2)


@dataclass(frozen=True)
class PeerBuffers:
    """One rank's view of its group's staging buffers. ``data_ptrs`` / ``flag_ptrs`` (int64
    [world], on the rank's device) hold every rank's buffer and flag array addresses; a buffer
    is two slots of ``slot_bytes``, a flag array int32 [NUM_PROGRAMS, world] that starts at 0.
    ``epochs`` (int32 [NUM_PROGRAMS], this rank's own, starts at 0) counts the calls;
    ``owned`` keeps alive the tensors the addresses point into."""

    rank: int
    world: int
    dtype: torch.dtype
    slot_bytes: int
    data_ptrs: torch.Tensor
    flag_ptrs: torch.Tensor
    epochs: torch.Tensor
    owned: tuple[torch.Tensor, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.world <= MAX_WORLD or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of {self.world}: at most {MAX_WORLD} ranks")

    def fits(self, x: torch.Tensor) -> bool:
        """Whether ``x`` [..., hidden] can be reduced through these buffers."""
        return (x.dtype == self.dtype and x.numel() > 0
                and x.numel() * x.element_size() <= self.slot_bytes)


@triton.jit
def _signal_and_wait(FLAG_PTRS, rank, pid, epoch, WORLD: tl.constexpr):
    """Program ``pid``'s barrier of this call: after the program's stores, set its flag to
    ``epoch`` at every rank (release), then wait until every rank's flag for it is there
    (acquire). A rank is at most one call ahead, so 'there' is 'at least ``epoch``' (the
    int32 difference, which survives the counter's wrap). Scalar atomics, one rank at a time:
    a loop over a vector of flags fails to compile in Triton 3.6."""
    tl.debug_barrier()  # every thread's stores come before the signal
    for peer in tl.static_range(WORLD):
        theirs = tl.load(FLAG_PTRS + peer).to(tl.pointer_type(tl.int32))
        tl.atomic_xchg(theirs + pid * WORLD + rank, epoch, sem="release", scope="sys")
    mine = tl.load(FLAG_PTRS + rank).to(tl.pointer_type(tl.int32)) + pid * WORLD
    for peer in tl.static_range(WORLD):
        seen = tl.atomic_add(mine + peer, 0, sem="acquire", scope="sys")
        while epoch - seen > 0:
            seen = tl.atomic_add(mine + peer, 0, sem="acquire", scope="sys")
    tl.debug_barrier()  # no thread reads a peer's rows before every flag is seen


@triton.jit
def _staging(DATA_PTRS, rank, dtype: tl.constexpr):
    """Rank ``rank``'s staging buffer (16-byte aligned, as every allocation: loads vectorize)."""
    return tl.multiple_of(tl.load(DATA_PTRS + rank).to(tl.pointer_type(dtype)), 16)


@triton.jit
def _all_reduce_rms_norm_kernel(
    X, RESIDUAL, WEIGHT, OUT, RESIDUAL_OUT, SCALE, DATA_PTRS, FLAG_PTRS, EPOCHS, rank, n_rows,
    n_cols, stride_x, stride_r, slot_elems, eps, WORLD: tl.constexpr, BLOCK: tl.constexpr,
    OUT_DTYPE: tl.constexpr, MODE: tl.constexpr, FP8_MAX: tl.constexpr,
    MIN_SCALE: tl.constexpr, PROGRAMS: tl.constexpr, PDL: tl.constexpr,
):
    """Program ``pid`` of a call (see the module docstring). ``OUT`` and ``RESIDUAL_OUT`` are
    contiguous; ``MODE`` STATIC quantizes with the scale at ``SCALE``, ONE_ROW (one row) stores
    its dynamic scale there."""
    dependent_launch.enter(PDL)
    pid = tl.program_id(0)
    epoch = tl.load(EPOCHS + pid) + 1
    tl.store(EPOCHS + pid, epoch)
    if pid < n_rows:
        dtype = X.dtype.element_ty
        cols = tl.arange(0, BLOCK)
        ok = cols < n_cols
        slot = (epoch & 1).to(tl.int64) * slot_elems
        own = _staging(DATA_PTRS, rank, dtype) + slot
        for row in range(pid, n_rows, PROGRAMS):
            x = tl.load(X + row * stride_x + cols, mask=ok)
            tl.store(own + row * n_cols + cols, x, mask=ok)
        _signal_and_wait(FLAG_PTRS, rank, pid, epoch, WORLD)
        for row in range(pid, n_rows, PROGRAMS):
            total = tl.zeros([BLOCK], dtype=tl.float32)
            for peer in tl.static_range(WORLD):
                rows = _staging(DATA_PTRS, peer, dtype) + slot
                total += tl.load(rows + row * n_cols + cols, mask=ok, other=0.0,
                                 cache_modifier=".cg").to(tl.float32)  # past L1: peers wrote
            out = add_and_normalize(total.to(dtype).to(tl.float32), RESIDUAL, WEIGHT,
                                    RESIDUAL_OUT, row, stride_r, n_cols, eps, cols, ok, True,
                                    dtype, OUT_DTYPE)
            if MODE == ONE_ROW:
                quantize_one_row(out, OUT, SCALE, cols, ok, FP8_MAX, MIN_SCALE)
            else:
                if MODE == STATIC:
                    out = quantize_values(out, tl.load(SCALE).to(tl.float32), FP8_MAX)
                tl.store(OUT + row * n_cols + cols, out.to(OUT.dtype.element_ty), mask=ok)


def all_reduce_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
    peers: PeerBuffers, quant: InputQuant | None = None,
) -> tuple[torch.Tensor | QuantizedInput, torch.Tensor]:
    """With ``s`` the sum over the group of every rank's ``x`` [..., hidden] (rounded to
    ``x``'s dtype): ``(weight * norm(s + residual), s + residual)``, as ``rms_norm`` returns
    it, on every rank. A collective: every rank of ``peers`` calls it with the same shapes, in
    the same order as its other calls. ``peers.fits(x)`` must hold."""
    hidden = x.shape[-1]
    if not peers.fits(x):
        raise ValueError(f"{tuple(x.shape)} {x.dtype} does not fit the staging buffers "
                         f"({peers.slot_bytes} bytes of {peers.dtype})")
    if residual.shape != x.shape or residual.dtype != x.dtype or weight.shape != (hidden,):
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} and weight "
                         f"{tuple(weight.shape)} for x {tuple(x.shape)} {x.dtype}")
    rows = rows_of(x)
    res_rows = rows_of(residual)
    n_rows = rows.shape[0]
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mode, scale, later = PLAIN, None, None
    if quant is not None and quant.scale is not None:
        mode, scale = STATIC, quant.scale
    elif quant is not None and n_rows == 1:
        mode, scale = ONE_ROW, torch.empty((), dtype=torch.float32, device=x.device)
    else:
        later = quant  # a dynamic scale over several rows needs the whole output first
    out = torch.empty(x.shape, dtype=out_dtype if mode == PLAIN else quant.dtype,
                      device=x.device)
    block = triton.next_power_of_2(hidden)
    _all_reduce_rms_norm_kernel[(NUM_PROGRAMS,)](
        rows, res_rows, weight.contiguous(), out, res_out, out if scale is None else scale,
        peers.data_ptrs, peers.flag_ptrs, peers.epochs, peers.rank, n_rows, hidden,
        rows.stride(0), res_rows.stride(0), peers.slot_bytes // x.element_size(), eps,
        WORLD=peers.world, BLOCK=block,
        OUT_DTYPE=TL_DTYPES[out_dtype], MODE=int(mode),
        FP8_MAX=0.0 if mode == PLAIN else torch.finfo(quant.dtype).max, MIN_SCALE=MIN_SCALE,
        PROGRAMS=NUM_PROGRAMS, **dependent_launch.launch_options(x.device),
        num_warps=min(max(block // 512, 1), 16),
    )
    if mode != PLAIN:
        return QuantizedInput(out.reshape(-1, hidden), scale, out_dtype), res_out
    return (out if later is None else later.quantize(out)), res_out
