"""Training under torchrun: where this process sits (:class:`Dist`), the process group, the sums.

One process (``WORLD_SIZE`` unset or 1) needs no ``torch.distributed``; under torchrun every
process trains with DistributedDataParallel, and the tallies are summed over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qexport.errors import InputError
from qexport.tally import Tally


@dataclass(frozen=True, slots=True)
class Dist:
    """Where this process sits in a torchrun job (world_size 1: no torch.distributed)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    try:
        world_size, rank, local_rank = (
            int(os.environ.get(name, default)) for name, default in zip(names, ("1", "0", "0"), strict=True)
        )
    except ValueError:
        shown = ", ".join(f"{n}={os.environ.get(n)!r}" for n in names)
        raise InputError(f"torchrun environment is not numeric ({shown}); launch with torchrun") from None
    if world_size > 1 and not dist.is_available():
        raise InputError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    if not 0 <= rank < max(world_size, 1):
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world_size}; launch with torchrun")
    return Dist(world_size, rank, local_rank)


def init_group(where: Dist) -> None:
    # nccl for GPUs; gloo is torch's CPU backend (and what the CPU tests run on)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=where.rank, world_size=where.world_size)


@contextmanager
def process_group(where: Dist) -> Iterator[None]:
    """The torch.distributed group for the block, unless there is one process or one already."""
    owns_group = where.enabled and not dist.is_initialized()
    try:
        if owns_group:
            init_group(where)
        yield
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def summed(tally: Tally, where: Dist) -> tuple[float, float, int]:
    """(mean loss, top-1 %, count) of a tally, summed over the processes."""
    loss_sum, correct, count = tally.totals(all_reduce=where.enabled)
    if count == 0:
        return float("nan"), 0.0, 0
    return loss_sum / count, 100.0 * correct / count, count
