"""The tensor-parallel ranks as Ray actors (``distributed_executor_backend="ray"``,
``--worker-use-ray``).

Each rank is an actor holding one GPU (one CPU where the cluster has no GPUs) that builds the
engine a torchrun rank builds, from the variables torchrun would set (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): the ranks run the same SPMD engine over torch.distributed,
so the results are torchrun's. Ray only places and starts them, hands each ``generate`` call's
prompts to every rank and brings rank 0's outputs back. Ranks are ordered by node (ranks of a node
are consecutive) and see all of their node's GPUs (so NCCL can use the links between them), each
using the one Ray gave it as its LOCAL_RANK. A rank that fails or dies ends all of them, with
an error naming it.

Ray is an optional dependency: ``pip install 'solidx[ray]'``. When this process starts Ray, it
gives the actors this process's import path; on a cluster started beforehand
(``ray start``), install solidx on every node.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from typing import Any

from solidx.runtime import envs
from solidx.runtime.config import Config
from solidx.runtime.engine import LLMEngine
from solidx.runtime.launch import launch_rank
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.tokenizer import get_tokenizer

PLACEMENT_TIMEOUT_S = 120.0


def import_ray() -> Any:
    """The ``ray`` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "distributed_executor_backend='ray' (--worker-use-ray) needs Ray, which is not "
            "installed: pip install 'solidx[ray]' (or pip install ray); or run the ranks under "
            "torchrun instead"
        ) from None
    return ray


class RankWorker:
    """One rank, inside its Ray actor: it reports where it runs, then builds its engine with
    the variables ``start`` gives it and runs the generate calls it is handed."""

    def __init__(self) -> None:
        self.engine: LLMEngine | None = None

    def placement(self) -> tuple[str, list[int]]:
        """The actor's node address and the GPU ids Ray gave it."""
        ray = import_ray()
        return ray.util.get_node_ip_address(), sorted(int(g) for g in ray.get_gpu_ids())

    def free_port(self) -> int:
        """A free TCP port on this node, for the rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def start(self, env: dict[str, str], model: str, kwargs: dict[str, Any]) -> None:
        os.environ.update(env)  # before anything initializes CUDA
        self.engine = LLMEngine(Config(model=model, **kwargs))

    def generate(
        self, prompts: list[str | list[int]], params: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput] | None:
        assert self.engine is not None, "start() builds the engine first"
        outputs = self.engine.generate(prompts, params, use_tqdm)
        return outputs if launch_rank() == 0 else None


class RayExecutor:
    """Starts ``config.tensor_parallel_size`` ranks as Ray actors and runs generate calls on
    them; the caller's process holds no engine, only the tokenizer."""

    def __init__(self, config: Config) -> None:
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            # The actors import solidx as this process does: from the same path entries.
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}})
        self.tokenizer = get_tokenizer(config)
        self.actors: list[Any] = []
        self.placement_group: Any = None
        self._start(config)

    def _start(self, config: Config) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        world = config.tensor_parallel_size
        use_gpu = _use_gpus(config, self.ray.cluster_resources())
        bundle = {"GPU": 1} if use_gpu else {"CPU": 1}
        self.placement_group = placement_group([bundle] * world, strategy="PACK")
        ready, _ = self.ray.wait([self.placement_group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            self.shutdown()
            raise RuntimeError(
                f"Ray could not place {world} ranks with one {'GPU' if use_gpu else 'CPU'} each "
                f"within {PLACEMENT_TIMEOUT_S:.0f} s (cluster: {self.ray.cluster_resources()})"
            )
        actor = self.ray.remote(RankWorker)
        actors = [
            actor.options(
                num_gpus=1 if use_gpu else 0,
                num_cpus=0 if use_gpu else 1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, i),
            ).remote()
            for i in range(world)
        ]
        self.actors = actors
        places = self._get([a.placement.remote() for a in actors], "reporting their placement")
        order = sorted(range(world), key=lambda i: places[i])
        self.actors = [actors[i] for i in order]
        places = [places[i] for i in order]
        master_addr = places[0][0]
        (master_port,) = self._get([self.actors[0].free_port.remote()], "finding a port")
        kwargs = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.init and f.name not in ("model", "distributed_executor_backend", "worker_use_ray")
        }
        shared = {name: os.environ[name] for name in envs.VARIABLES if name in os.environ}
        shared.update(WORLD_SIZE=str(world), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        starts = []
        for rank, (node, gpus) in enumerate(places):
            on_node = [i for i, (n, _) in enumerate(places) if n == node]
            env = dict(shared, RANK=str(rank), LOCAL_WORLD_SIZE=str(len(on_node)))
            if use_gpu:
                node_gpus = sorted(g for i in on_node for g in places[i][1])
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, node_gpus))
                env["LOCAL_RANK"] = str(node_gpus.index(gpus[0]))
            else:
                env["LOCAL_RANK"] = str(on_node.index(rank))
            starts.append(self.actors[rank].start.remote(env, config.model, kwargs))
        self._get(starts, "building their engines")

    def generate(
        self, prompts: list[str | list[int]], params: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput]:
        """Run one generate call on every rank (``LLMEngine.generate``); rank 0's outputs."""
        refs = [
            actor.generate.remote(prompts, params, use_tqdm and rank == 0)
            for rank, actor in enumerate(self.actors)
        ]
        return self._get(refs, "generating")[0]

    def _get(self, refs: list[Any], doing: str) -> list[Any]:
        """Every ref's value, in order; if a rank fails, end all ranks and raise naming it."""
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                self.ray.get(done[0])
            except Exception as exc:  # any failure of a rank ends all of them
                self.shutdown()
                raise RuntimeError(
                    f"tensor-parallel rank {rank_of[done[0]]} failed while {doing}; all ranks "
                    f"were stopped: {exc}"
                ) from exc
        return self.ray.get(refs)

    def shutdown(self) -> None:
        """Kill the actors and free their placement."""
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None


def _use_gpus(config: Config, resources: dict[str, float]) -> bool:
    """Whether the ranks take GPUs: ``device`` auto or cuda and the cluster has enough."""
    gpus = int(resources.get("GPU", 0))
    wanted = (config.device == "auto" and gpus > 0) or config.device.startswith("cuda")
    if wanted and gpus < config.tensor_parallel_size:
        raise ValueError(
            f"tensor_parallel_size={config.tensor_parallel_size} needs as many GPUs, and the Ray "
            f"cluster has {gpus}"
        )
    return wanted
