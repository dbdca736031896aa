"""Multi-process training through PyTorch's own engine: ``torchrun`` sets the environment,
this joins the process group (NCCL on GPUs, gloo on CPUs), shards the data, and reduces metrics.

A plain ``python``/``edge-cls`` run is a world of one and touches none of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a scalar over ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank (so all ranks take the same branch)."""
        if not self.enabled:
            return bool(flag)
        tensor = torch.tensor([float(flag)], device=self.comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Concatenate each rank's array in rank order (rank 0 first)."""
        if not self.enabled:
            return array
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, array)
        return np.concatenate(parts)

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics drift apart per rank),
        so all ranks evaluate, and rank 0 saves, one and the same model."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_from_env(device: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes, or return a one-process context.

    ``device``: "cpu", "cuda" or None (CUDA when available).
    """
    wants_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
        logger.info("joined process group: rank %d of %d (%s)", rank, world, dist.get_backend())
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=where)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffled (or class-weighted) indices, a fresh order per epoch, sharded across ranks.

    torch's ``DistributedSampler`` cannot draw by weight and ``WeightedRandomSampler`` cannot
    shard, so one small sampler does both. The order is a pure function of (seed, epoch): that is
    the sampler state a checkpoint saves, and why a resumed run sees the same batches.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 weights: np.ndarray | None = None) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0
        self.per_rank = -(-size // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        order = order.tolist()
        order += order[: self.per_rank * self.world_size - self.size]  # pad so every rank gets as many
        return iter(order[self.rank::self.world_size])
