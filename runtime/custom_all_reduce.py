"""The custom all-reduce: a one-shot sum over NVLink for the small tensors of decode steps.

Every rank copies its input into a buffer of PyTorch symmetric memory (mapped into every peer's
address space), waits for its peers at a device-side barrier, and reads and sums all the peers'
copies itself: one kernel, no NCCL protocol, capturable in CUDA graphs. NCCL's ring/tree
all-reduce pays several microseconds of protocol per call, which at batch-1 decode (two
all-reduces of a few KiB per layer) is a large part of a tensor-parallel step; vLLM's
``custom_all_reduce`` exists for the same reason (``disable_custom_all_reduce`` turns both off).

On request (``enable_fused``, ``SOLIDX_FUSED_ALL_REDUCE=1``) it also sets up the staging
buffers through which the all-reduce after a row-parallel layer is fused into the RMSNorm after
it (:class:`PeerBuffers`, the kernel in ``runtime.layers.fused.all_reduce_rms_norm``): two
slots of ``MAX_BYTES`` and a flag array per rank, in symmetric memory too.

Only multicast-free operations are used (NVLink multicast stays off: ``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``). Tensors over ``MAX_BYTES``, of another dtype than the
buffer's, or on a machine where the buffer cannot be set up (no peer access) go to NCCL.
"""

from __future__ import annotations

import logging
import socket

import torch
import torch.distributed as dist

from solidx.runtime.layers.fused.all_reduce_rms_norm import NUM_PROGRAMS, PeerBuffers

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # one-shot reads world × bytes per rank: past ~1 MiB NCCL's ring is faster
SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)  # what PyTorch's one-shot kernel sums


class CustomAllReduce:
    """One-shot all-reduce of ``dtype`` tensors up to ``MAX_BYTES`` over ``group``'s GPUs.
    Building it is a collective: every rank of the group must build it at the same point."""

    def __init__(self, group: dist.ProcessGroup, device: torch.device, dtype: torch.dtype) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        self.dtype = dtype
        self.buffer = symm_mem.empty(MAX_BYTES // dtype.itemsize, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)
        self._copy_out = getattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out", None)
        self._group, self._device = group, device
        self.peers: PeerBuffers | None = None  # set up by enable_fused

    def enable_fused(self) -> PeerBuffers:
        """The staging buffers of the all-reduce fused with the norm, set up on first call
        (a collective: every rank calls it at the same point)."""
        if self.peers is None:
            self.peers = _peer_buffers(self._group, self._device, self.dtype)
        return self.peers

    @classmethod
    def create(
        cls, group: dist.ProcessGroup, device: torch.device, dtype: torch.dtype
    ) -> CustomAllReduce | None:
        """The custom all-reduce, or None (logged) where this machine or dtype cannot have it.
        A collective; the decision is the same on every rank, so all use NCCL or none do."""
        reason, custom = None, None
        if dtype not in SUPPORTED_DTYPES:
            reason = f"dtype {dtype} (supported: bfloat16, float32)"
        elif not _every_rank(_peers_reachable(group), group, device):
            reason = "the group's GPUs are not all on one host with access to each other"
        else:
            try:
                custom = cls(group, device, dtype)
            except (RuntimeError, NotImplementedError) as exc:
                reason = f"symmetric memory could not be set up ({exc})"
            if not _every_rank(custom is not None, group, device):
                reason, custom = reason or "symmetric memory failed on another rank", None
        if custom is None:
            logger.info("custom all-reduce off, NCCL serves every all-reduce: %s", reason)
        return custom

    def eligible(self, x: torch.Tensor) -> bool:
        """Whether ``x`` goes through the one-shot kernel (else NCCL)."""
        return (
            x.dtype == self.dtype
            and x.is_contiguous()
            and x.numel() * x.element_size() <= MAX_BYTES
            and x.numel() * x.element_size() % 16 == 0
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``x`` as a new tensor (``x`` is left as it was)."""
        n = x.numel()
        staged = self.buffer[:n]
        out = torch.empty_like(x)
        if self._copy_out is not None:  # the copy into the buffer is fused into the kernel
            self._copy_out(staged, x.view(-1), "sum", self.group_name, out.view(-1))
        else:
            staged.copy_(x.view(-1))
            torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, out.view(-1))
        return out


def _peer_buffers(group: dist.ProcessGroup, device: torch.device,
                  dtype: torch.dtype) -> PeerBuffers:
    """This rank's :class:`PeerBuffers` in new symmetric memory (a collective). The flags are
    zeroed before the rendezvous, which every rank must reach before any returns, so no peer
    signals into an array not yet cleared."""
    import torch.distributed._symmetric_memory as symm_mem

    world = dist.get_world_size(group)
    staging = symm_mem.empty(2 * MAX_BYTES // dtype.itemsize, dtype=dtype, device=device)
    flags = symm_mem.empty(NUM_PROGRAMS * world, dtype=torch.int32, device=device)
    flags.zero_()
    torch.cuda.synchronize(device)
    staging_handle = symm_mem.rendezvous(staging, group.group_name)
    flags_handle = symm_mem.rendezvous(flags, group.group_name)
    # the tensors must outlive the handles' pointers: the PeerBuffers keep them
    return PeerBuffers(
        rank=dist.get_rank(group), world=world, dtype=dtype, slot_bytes=MAX_BYTES,
        data_ptrs=torch.tensor(staging_handle.buffer_ptrs, dtype=torch.int64, device=device),
        flag_ptrs=torch.tensor(flags_handle.buffer_ptrs, dtype=torch.int64, device=device),
        epochs=torch.zeros(NUM_PROGRAMS, dtype=torch.int32, device=device),
        owned=(staging, flags),
    )


def _peers_reachable(group: dist.ProcessGroup) -> bool:
    """Whether every rank of the group is on this host and this GPU can access their GPUs."""
    here = (socket.gethostname(), torch.cuda.current_device())
    ranks: list[tuple[str, int] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(ranks, here, group=group)
    if any(rank is None or rank[0] != here[0] for rank in ranks):
        return False
    peers = {rank[1] for rank in ranks if rank is not None} - {here[1]}
    return all(torch.cuda.can_device_access_peer(here[1], peer) for peer in peers)


def _every_rank(ok: bool, group: dist.ProcessGroup, device: torch.device) -> bool:
    """Whether ``ok`` holds on every rank of the group."""
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item())
