"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), and the
steps every rank takes alike (on_rank0, all_mean, ranks_in_sync, exit_rank, teardown).

A plain `python train.py` is world size 1 and never touches torch.distributed.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from configs.errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} asked for but CUDA is not available; use device=cpu or device=auto")
    return device


def setup(device: str, backend: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Join the process group when launched by torchrun; pick this rank's device."""
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        if device.startswith("cuda:"):  # kernels, autocast and empty_cache act on this one
            torch.cuda.set_device(device)
        return DistEnv(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl" and not device.startswith("cuda"):
        raise UserError("backend=nccl needs CUDA devices; use backend=gloo (or auto) on CPU")
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    # device_id binds the NCCL communicator to this rank's GPU at once (no lazy init, no guess)
    bind = {"device_id": torch.device(device)} if device.startswith("cuda") else {}
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **bind)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def on_rank0(env: DistEnv, work: Callable[[], Any]) -> Any:
    """work() on rank 0 (which writes out_dir), its result (picklable) on every rank. A
    UserError there is raised on every rank alike, so no rank waits for rank 0 in a collective
    and each prints the same one line."""
    box = [None, None]
    if env.is_main:
        try:
            box = [work(), None]
        except UserError as exc:
            box = [None, str(exc)]
    if env.enabled:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise UserError(box[1])
    return box[0]


def all_mean(values: list[float], env: DistEnv) -> list[float]:
    """Average floats across ranks (identity in a single process)."""
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64,
                     device=env.device if env.device.startswith("cuda") else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / env.world_size).tolist()


@torch.no_grad()
def ranks_in_sync(model: torch.nn.Module, env: DistEnv) -> bool:
    """Whether every rank holds bit-identical parameters: compares each rank's parameter
    bytes digest (torn or rank-dependent updates show up here)."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    digests = [None] * env.world_size
    dist.all_gather_object(digests, h.hexdigest())
    return len(set(digests)) == 1


def exit_rank(code: int) -> None:
    """End a finished rank of a multi-process run now. At interpreter teardown gloo's transport
    threads can still be joinable, and std::terminate then aborts a rank that succeeded
    ("terminate called without an active exception", now and then on 2 cores)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def teardown(env: DistEnv, clean: bool = True) -> None:
    """Leave the process group. After a clean run, wait for every rank first: a rank that tears
    its gloo connections down while rank 0 still writes its summary can abort (SIGABRT) on the
    peer's closed socket. After a crash, skip the barrier: the other ranks may never arrive."""
    if env.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
