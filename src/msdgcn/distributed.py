"""Data-parallel training under torchrun: process group, data shards and gathered evaluation.

A run launched by `torchrun --nproc_per_node N -m msdgcn train ...` trains one model replica per
process with DistributedDataParallel (NCCL on GPUs, gloo on CPUs). `batch_size` is the global
batch: each optimizer step uses the same `batch_size` images, drawn from the same seeded
permutation, as a single-process run, split into one contiguous slice per rank. On CUDA every
BatchNorm layer becomes a SyncBatchNorm, so batch statistics are taken over the global batch as
in one process, and the result does not depend on the number of GPUs.

Only rank 0 writes files (checkpoints, results) and logs progress.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process; a single process has rank 0 in a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """Return this process's device: `cuda` becomes `cuda:<local rank>` under torchrun."""
        device = torch.device(requested)
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE_PROCESS = DistributedContext()


def context_from_environment() -> DistributedContext:
    """Read RANK, WORLD_SIZE and LOCAL_RANK, which torchrun sets in every process it starts."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE_PROCESS
    try:
        return DistributedContext(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"invalid torchrun environment (RANK={os.environ.get('RANK')!r}, "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}); launch with torchrun or unset WORLD_SIZE"
        ) from error


def init_process_group(device: str) -> DistributedContext:
    """Join the process group torchrun set up, with NCCL for CUDA and gloo otherwise.

    Returns the single-process context, and joins nothing, outside torchrun or with one process.
    """
    context = context_from_environment()
    if not context.enabled or is_initialized():
        return context
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(context.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    logger.info("rank %d of %d joined the %s process group", context.rank, context.world_size, backend)
    return context


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def quiet_other_ranks(context: DistributedContext) -> None:
    """Log only errors on ranks other than 0; rank 0 logs progress and warnings once."""
    if not context.is_main:
        logging.getLogger().setLevel(logging.ERROR)


def check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must be a multiple of the "
            f"{world_size} processes; choose a batch size divisible by {world_size}"
        )


def epoch_batches(
    order: list[int],
    batch_size: int,
    skip_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    min_images_per_rank: int = 1,
) -> list[list[int]]:
    """Split one epoch's permutation into this rank's part of every global batch.

    Global batch k is `order[k * batch_size : (k + 1) * batch_size]`, whatever the world size;
    rank r takes the r-th of `world_size` nearly equal contiguous slices of it. The first
    `skip_batches` global batches are left out (the steps an interrupted epoch already took).

    A last global batch that cannot give every rank `min_images_per_rank` images, or that
    contains a single image (BatchNorm in training mode needs two), is dropped on every rank.
    """
    batches = []
    for start in range(skip_batches * batch_size, len(order), batch_size):
        global_batch = order[start : start + batch_size]
        if len(global_batch) < max(world_size * min_images_per_rank, 2):
            continue
        bounds = np.linspace(0, len(global_batch), world_size + 1).round().astype(int)
        batches.append(global_batch[bounds[rank] : bounds[rank + 1]])
    return batches


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return the [start, stop) range of `count` items that rank evaluates: contiguous, in order."""
    bounds = np.linspace(0, count, world_size + 1).round().astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def gather_rows(local: torch.Tensor, count: int, context: DistributedContext) -> torch.Tensor:
    """Concatenate every rank's rows (n_r, C) in rank order into (count, C), on every rank.

    The shards come from `shard_bounds`, so rank order is dataset order. all_gather needs equal
    shapes, so each shard is padded to the largest and the padding is cut off again: every image
    appears exactly once.
    """
    if not context.enabled:
        return local
    sizes = [shard_bounds(count, r, context.world_size) for r in range(context.world_size)]
    largest = max(stop - start for start, stop in sizes)
    padded = local.new_zeros((largest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    rows = torch.cat([part[: stop - start] for part, (start, stop) in zip(gathered, sizes)])
    if rows.shape[0] != count:
        raise RuntimeError(f"gathered {rows.shape[0]} rows for {count} images; the shards are inconsistent")
    return rows


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """Return whether `flag` is true on at least one rank (an all-reduce of one number)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_sum(values: list[float], context: DistributedContext, device: torch.device) -> list[float]:
    """Sum a few numbers over the ranks (float64, so image counts stay exact)."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(value: object, context: DistributedContext) -> list[object]:
    """Collect one picklable value per rank, in rank order, on every rank."""
    if not context.enabled:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP copies them at the start of each training forward pass, so after the last step each rank
    still has the statistics of its own slice. Evaluation must use rank 0's, which are saved.
    """
    if context.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap_model(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """Wrap the model in DistributedDataParallel; on CUDA, synchronise BatchNorm first.

    SyncBatchNorm makes the batch statistics those of the global batch, so N processes with
    batch_size / N images each compute what one process with batch_size images computes. PyTorch
    implements SyncBatchNorm for accelerators only, so on the CPU (gloo) each rank normalises with
    the statistics of its own slice and DDP copies rank 0's running statistics to the others.
    The conversion happens in place, so an optimizer built on the model stays valid.
    """
    if not context.enabled:
        return model
    # NOTE: the NCCL and SyncBatchNorm path has not run on GPUs yet; the tests run gloo on CPUs.
    if device.type == "cuda":
        # Replaces the BatchNorm children in place; the new layers reuse the same parameters.
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        logger.warning(
            "PyTorch has no SyncBatchNorm on the CPU: each of the %d processes takes BatchNorm "
            "statistics over its own slice of the global batch, so results differ from one process",
            context.world_size,
        )
    device_ids = [device.index] if device.type == "cuda" else None
    # Some backbones have parameters that forward_features never uses (ConvNeXt's head norm).
    # With static_graph, DDP finds them in the first step and leaves them out of the gradient
    # all-reduce. Without it, the bucket that contains them is never reduced, so its gradients
    # stay those of one rank. The set of used parameters is the same in every step here.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, static_graph=True)



def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
