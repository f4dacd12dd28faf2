"""Training on many processes with ``torch.distributed`` (launched by ``torchrun``).

One process per GPU (or per CPU share), each stepping its share of the environments; the
gradients are averaged with one flat all-reduce per minibatch (NCCL on GPUs, gloo on CPUs),
as CleanRL's multi-GPU PPO and rl_games do. Nothing here runs in a single process: every
helper is a no-op when no process group is initialized.

The guard's part (:class:`pyppo.GradientGuard` with ``process_group``): each rank zeroes and
counts its own NaN/inf gradient elements *before* the all-reduce, so one rank's NaN costs only
its own bad elements; the counts ride in the same all-reduce as the gradients, so every rank
sees the global counts, takes the same skip decision and clips by the same global norm.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pyppo.device import resolve_device


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def init_from_environment(device: str | None) -> torch.device:
    """The device to train on; under ``torchrun`` (``WORLD_SIZE`` > 1) first join the process
    group: NCCL when training on CUDA, each rank on ``LOCAL_RANK``'s GPU, gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return resolve_device(device)
    wants_cuda = device is None and torch.cuda.is_available() or str(device).startswith("cuda")
    if wants_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but no CUDA GPU is available here")
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
        atexit.register(dist.destroy_process_group)
        return local
    dist.init_process_group("gloo")
    atexit.register(dist.destroy_process_group)
    return torch.device("cpu")


def all_reduce_sum_(tensor: Tensor, group: Any = None) -> Tensor:
    """Sum ``tensor`` over the processes, in place (unchanged in a single process)."""
    if rank_and_world(group)[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_max(value: float, device: torch.device, group: Any = None) -> float:
    """The largest ``value`` over the processes (``value`` in a single process)."""
    if rank_and_world(group)[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return float(tensor)


def broadcast_module_(module: nn.Module, group: Any = None) -> None:
    """Make every process's parameters and buffers rank 0's (identical initial weights)."""
    if rank_and_world(group)[1] > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0, group=group)


def broadcast_floats(values: list[float], device: torch.device, group: Any = None) -> list[float]:
    """Rank 0's ``values`` on every process (each process passes a list of the same length)."""
    if rank_and_world(group)[1] == 1 or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0, group=group)
    return tensor.tolist()


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts and lists moved to the CPU (to gather it)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_cpu(v) for v in obj]
    return obj


def gather_to_rank0(obj: Any, group: Any = None) -> list[Any] | None:
    """Every process's ``obj``, as a list by rank, on rank 0 (None elsewhere); ``[obj]`` in a
    single process."""
    rank, world = rank_and_world(group)
    if world == 1:
        return [obj]
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0, group=group)
    return gathered


def on_rank0(work: Callable[[], Any], device: torch.device) -> Any:
    """Run ``work`` on rank 0 alone and hand its result to every process; an error there
    stops every process (rank 0 raises it, the others say where it happened)."""
    rank, world = rank_and_world()
    if world == 1:
        return work()
    result, error = None, None
    if rank == 0:
        try:
            result = work()
        except Exception as err:  # re-raised below, after every process knows
            error = err
    if all_reduce_max(float(error is not None), device):
        if error is not None:
            raise error
        raise RuntimeError("stopped: process 0 failed (its message says why)")
    out = [result]
    dist.broadcast_object_list(out, src=0)
    return out[0]


def averaged_gradients_(grads: list[Tensor], extra: Tensor, group: Any = None) -> Tensor:
    """Average ``grads`` over the processes in place with one flat all-reduce, in which
    ``extra`` (e.g. the guard's counts) rides along summed; returns the summed ``extra``."""
    world = rank_and_world(group)[1]
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), extra.float().reshape(-1)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view(g.shape).div_(world))
        offset += n
    return flat[offset:]
