"""Several processes, one run: ``torchrun --nproc_per_node N -m mmsent train ...`` shards the folds.

Cross-validation folds are independent, so the unit of parallel work is the fold: process ``r`` of ``N`` trains the
folds ``k`` with ``k % N == r`` (on GPU ``cuda:LOCAL_RANK``), writes each finished fold to the run folder exactly as
a single process does (``folds/fold_K/result.json`` + model), and process 0 then reads every fold back and writes
the run's metrics. No gradients are exchanged, so the result is the same as one process training the folds one after
another, and the process group only carries barriers (gloo, which works for CPU and GPU processes alike).

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from .errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's place among the processes training one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, fold: int) -> bool:
        """Whether this process trains ``fold``."""
        return fold % self.world_size == self.rank

    def device(self, device):
        """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` (modulo the GPUs present)."""
        if device.type == "cuda" and device.index is None and self.world_size > 1:
            import torch

            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return device

    def report(self, log: Callable[..., None]) -> Callable[..., None]:
        """``log`` in the main process; elsewhere a no-op (the main process reports every fold)."""
        return log if self.is_main else _silent

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed

            torch.distributed.barrier()


def _silent(*args, **kwargs) -> None:
    """The log of processes other than the main one."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from None


def current_shard() -> Shard:
    """The shard of this process, joining the process group that ``torchrun`` describes on first use."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Shard()
    shard = Shard(rank=_env_int("RANK", 0), world_size=world_size, local_rank=_env_int("LOCAL_RANK", 0))
    import torch.distributed  # only under torchrun, which comes with torch

    if not torch.distributed.is_initialized():
        # the fold with the longest training decides when the others pass the final barrier: allow hours
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=12))
    return shard
