"""Data parallelism under torchrun: each rank answers its share, rank 0 gathers.

Nothing here is a cluster framework: when `torchrun` sets WORLD_SIZE > 1 we initialise
torch.distributed (NCCL on CUDA, gloo otherwise) and use `all_gather_object`; without torchrun
every function is a no-op for a single process.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from qwen_eval.errors import UserError

# How long a rank waits for the others at a collective. Generous: ranks that finished their share
# wait for the slowest one, and in a suite for rank 0 to score the previous task (HumanEval and
# MBPP run programs), which can take many minutes.
TIMEOUT = timedelta(hours=2)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Initialise the process group once when launched by torchrun with more than one process."""
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        gpus = torch.cuda.device_count()
        if local_rank() >= gpus:
            raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', world_size())} processes on this "
                            f"machine but it has {gpus} GPU(s): use --nproc_per_node={gpus}, or hide the GPUs "
                            f"(CUDA_VISIBLE_DEVICES=) to run the ranks on CPU")
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list for a single process)."""
    if world_size() <= 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (`obj` itself for a single process)."""
    if world_size() <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
