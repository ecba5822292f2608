"""The launch this process is one rank of, as torchrun describes it in the environment.

torchrun gives each process ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (its GPU on the node) and
the rendezvous ``MASTER_ADDR`` / ``MASTER_PORT``; the Ray executor gives its actors the same
variables. Read here alone, below both the configuration (which checks the launch against
``tensor_parallel_size`` and picks the GPU) and ``distributed`` (which joins the group).
"""

from __future__ import annotations

import os

import torch.distributed as dist


def group_initialized() -> bool:
    """Whether this process has joined a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def launch_world_size() -> int:
    """Ranks of this launch: the process group's size, else torchrun's ``WORLD_SIZE``, else 1."""
    if group_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_rank() -> int:
    """This process's rank in the launch (torchrun's ``RANK``), 0 outside one."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This rank's index on its node (torchrun's ``LOCAL_RANK``): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rendezvous() -> tuple[str, int] | None:
    """The rendezvous store's address and port (``MASTER_ADDR``, ``MASTER_PORT``), if given."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return (addr, int(port)) if addr and port else None


def torchrun_command(tensor_parallel_size: int, model: str) -> str:
    """The command that runs ``solidx generate`` on ``tensor_parallel_size`` ranks."""
    return (
        f"torchrun --standalone --nnodes=1 --nproc-per-node={tensor_parallel_size} "
        f"$(which solidx) generate --model {model} --tensor-parallel-size {tensor_parallel_size}"
    )
