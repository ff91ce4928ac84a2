"""Training under ``torchrun``: the process group, this rank's share of a batch, DDP.

``torchrun`` (or ``python -m torch.distributed.run``) starts one process per rank and tells each
its place through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them there is one process
and everything here is a no-op. Choices:

* ``--batch`` stays the global batch: rank ``r`` of ``W`` takes positions ``r * B / W ..
  (r + 1) * B / W - 1`` of every batch (:func:`batch_share`). Every patch is a pure function of
  (seed, window index), so the ranks' shares together are exactly the patches one process draws
  at the same global batch, recorded or simulated, and no rank keeps state of its own: a
  checkpoint resumes on any number of ranks. ``B`` must divide by ``W`` (equal shares keep the
  average of the ranks' mean losses the mean over the batch).
* DDP averages the gradients over ranks: with equal shares and a loss that is a mean over the
  patches, that is the one-process gradient up to the order of float sums. Two exceptions, both
  per-rank statistics: batch normalisation (the attention fusion network only; the hybrid and
  the U-Net have none) normalises each rank's share by itself, and the dark-field loss is a
  weighted mean whose weights (faint windows, ``FAINT`` labels left out) need not split evenly.
* Validation runs on rank 0 alone and its metrics are broadcast, so every rank keeps the same
  history and drops the learning rate at the same epoch; the others wait in that broadcast.
  Checkpoints, ``history.json``, the plot, progress bars and info logs come from rank 0.
* Backend: the trainer trains on the CPU, so ranks talk over gloo; :func:`backend` gives NCCL
  for a network on a CUDA device.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedError(ValueError):
    """Settings that cannot be split over the ranks (a user error)."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world`` (``local`` on its machine)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, batch: int) -> range:
        return batch_share(batch, self.rank, self.world)

    def wrap(self, net: torch.nn.Module, method: str = "forward"):
        """The call that trains ``net``: ``net.<method>`` in one process, else that call
        inside DistributedDataParallel, whose gradient hooks only run through its forward."""
        if not self.distributed:
            return getattr(net, method)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(_Call(net, method))

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over the ranks (every rank gets it)."""
        if not self.distributed:
            return value.detach().item()
        t = value.detach().reshape(1).to(torch.float64).clone()
        dist.all_reduce(t)
        return float(t) / self.world

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank (a picklable value)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class _Call(torch.nn.Module):
    """``net.<method>`` as a module's forward, for DDP (the hybrid and U-Net train through
    ``logits``, not ``forward``). Holds no weights of its own."""

    def __init__(self, net: torch.nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x):
        return getattr(self.net, self.method)(x)


def from_env() -> Ranks:
    """This process's place as ``torchrun`` sets it; one process without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun "
                               "sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"rank {rank} of {world}: RANK must be within 0..WORLD_SIZE - 1")
    return Ranks(rank, world, local)


def backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device | str = "cpu") -> Ranks:
    """Join the process group when ``torchrun`` started this process (once; later calls return
    the same ranks). Ranks other than 0 log warnings only, so each line appears once."""
    ranks = from_env()
    if not ranks.distributed:
        return ranks
    if not dist.is_initialized():
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(ranks.local)
        dist.init_process_group(backend(device))
    if not ranks.is_main:
        logging.getLogger("glass-inspect").setLevel(logging.WARNING)
    return ranks


def finish() -> None:
    """Leave the process group (at the end of a command run under ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batch_share(batch: int, rank: int, world: int) -> range:
    """Positions ``0 .. batch - 1`` of a global batch that rank ``rank`` of ``world`` draws."""
    if batch % world:
        raise DistributedError(f"--batch {batch} is the global batch: it must divide by the "
                               f"{world} ranks (torchrun --nnodes x --nproc_per_node); use a "
                               f"multiple of {world}")
    n = batch // world
    return range(rank * n, (rank + 1) * n)


def patch_share(sampler, step: int, share: range) -> list:
    """The patches at positions ``share`` of :meth:`model.data.PatchSampler.batch` ``step``
    (its indices ``step * batch + k``, the first ``scratch_per_batch`` positions scratch)."""
    b, scratch = sampler.batch_size, sampler.scratch_per_batch
    return [sampler.patch(step * b + k, scratch=k < scratch) for k in share]
