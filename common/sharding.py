"""The shard rule of data-parallel training: which examples of a global batch each worker takes.

One rule for every engine, the loader and the oracle (:func:`common.oracle.sharded_sgd_step`):
a global batch, in the single-process order, splits into contiguous equal shards, shard ``r`` to
worker ``r`` (see :mod:`common.distributed`).
"""
from __future__ import annotations

from typing import List

__all__ = ["shard_slices", "check_shardable"]


def shard_slices(batch_size: int, world_size: int) -> List[slice]:
    """How data-parallel training splits a global batch of ``batch_size`` examples over
    ``world_size`` workers: ``world_size`` contiguous shards of ``batch_size // world_size``
    examples, shard ``r`` to worker ``r``; the last ``batch_size % world_size`` examples are left
    out (only a last, partial batch can have any: a full batch must divide evenly, see
    :func:`check_shardable`). Empty when there are fewer examples than workers."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    size = batch_size // world_size
    if size == 0:
        return []
    return [slice(rank * size, (rank + 1) * size) for rank in range(world_size)]


def check_shardable(batch_size: int, world_size: int) -> None:
    """A one-line error unless a global batch of ``batch_size`` splits evenly over ``world_size`` workers."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} does not split evenly over {world_size} workers; choose a batch "
                         f"size divisible by {world_size} (each worker takes batch_size / workers examples a step)")
