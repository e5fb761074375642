"""torchrun support: one fold across several processes (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=dist.get_rank(), world_size=world_size, local_rank=local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def select_device(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def current_numerics(device: torch.device):
    """What changes this process's floating-point results: the device type and, on the CPU, torch's threads."""
    from kit.runs import Numerics

    threads = torch.get_num_threads() if device.type == "cpu" else None
    return Numerics(device=device.type, threads=threads, deterministic=torch.are_deterministic_algorithms_enabled())


@torch.no_grad()
def check_in_sync(model: torch.nn.Module, info: DistInfo) -> None:
    """After training under DDP, every rank must hold the same weights (gradients were averaged across ranks).

    Raises:
        KitError: the ranks' weights differ (a broken process group or an unsynchronised update).
    """
    if not info.enabled:
        return
    from kit.errors import KitError

    fingerprint = torch.stack([p.double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(fingerprint) for _ in range(info.world_size)]
    dist.all_gather(gathered, fingerprint)
    for rank, other in enumerate(gathered):
        if not torch.allclose(other, gathered[0], rtol=1e-6, atol=1e-9):
            raise KitError(f"DDP: the weights of rank {rank} differ from rank 0 after training (ranks out of sync)")
