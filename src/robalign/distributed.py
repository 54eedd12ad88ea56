"""Data-parallel reductions inside a method's step: which process this is, and sums and means over the
processes of the run.

The trainer reduces its metrics through accelerate (`Accelerator.reduce`, once per optimiser step). The
methods need a few collectives inside a step (GAPO's probe gradient, the online methods' batch baseline)
and run without an `Accelerator` in unit tests, so they call torch.distributed through these functions.
Each is the identity with one process or without an initialised process group, so a single-process run
pays nothing and takes the same code path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this is process 0 of the data-parallel group (or the only process): the one that writes
    the run's shared files."""
    return rank_and_world()[0] == 0


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """x summed over the processes (x itself with one process), without gradient.

    For batch statistics such as the score-function baseline, so that N processes compute the value one
    process computes for the whole global micro-batch.
    """
    if rank_and_world()[1] == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def mean_over_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor averaged over the processes, in one collective (the tensors are flattened into one
    buffer); the same list with one process. Used for GAPO's probe gradient: one anchor for the global
    micro-batch."""
    world = rank_and_world()[1]
    if world == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
