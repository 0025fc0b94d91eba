"""Training split over processes with torchrun and DistributedDataParallel.

Batch sizes in the config are global: every process draws the same global batch (the same
indices and augmentations as a single process would) and trains on its contiguous share, so a run
on N processes computes what one process computes, up to float rounding and BatchNorm, whose
statistics are per process (use GroupNorm, e.g. small_cnn_gn, or SyncBatchNorm on CUDA for that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from debiaspl.errors import UserError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine

    @classmethod
    def from_environment(cls) -> "Distributed":
        """What torchrun set (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE); one process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the logs, checkpoints and files."""
        return self.rank == 0

    def cuda_device(self) -> torch.device:
        """This process's GPU: one each while there are enough, shared round-robin beyond that."""
        return torch.device("cuda", self.local_rank % torch.cuda.device_count())

    def backend(self, device_type: str) -> str:
        """nccl when every process has a GPU of its own; gloo on the CPU and where processes share a GPU
        (nccl refuses two ranks on one device; gloo carries CUDA tensors too, more slowly)."""
        if device_type == "cuda" and self.local_world_size <= torch.cuda.device_count():
            return "nccl"
        return "gloo"

    def start(self, device_type: str) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(self.backend(device_type))

    def check_divides(self, name: str, size: int) -> None:
        if size % self.world_size:
            raise UserError(f"{name} = {size} is a global batch size and must divide over the {self.world_size} "
                            f"processes torchrun started")

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a global batch [N, ...] -> [N / world_size, ...]."""
        if not self.enabled:
            return tensor
        size = len(tensor) // self.world_size
        return tensor[self.rank * size:(self.rank + 1) * size]

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over processes of equal-sized shards' values (a new tensor)."""
        if not self.enabled:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world_size

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Shards [n, ...] of every process concatenated in rank order: the global batch [N, ...]."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def stop(self) -> None:
        """Tear the process group down while the interpreter still runs: left to exit, gloo's threads
        were once destroyed still joinable, and a rank aborted ("terminate called without an active
        exception") after its run had finished."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
