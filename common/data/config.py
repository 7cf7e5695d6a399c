"""What a data pipeline loads and how it batches it, as one frozen value, and the checks it shares with the loader."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple, Union

import numpy as np

from ..sharding import check_shardable
from .transforms import Transform, check_size

__all__ = ["DataConfig", "as_config"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything that decides which batches :func:`~common.data.fashion_mnist_loaders` yields.

    - ``batch_size``; ``resize`` (None: 28 x 28; an integer or ``(height, width)``: bilinear);
    - ``seed``: the training split's order (``default_rng([seed, epoch])``) and its transforms'
      generators; ``subset`` / ``test_subset``: class-stratified samples of the two splits, drawn
      with ``subset_seed`` (not ``seed``, so runs with different seeds see the same examples);
    - the source: ``synthetic`` (:func:`~common.data.synthetic_fashion_mnist`, no files), else the
      real files from ``data_dir`` (or where :func:`~common.data.find_data_dir` finds them, with
      ``download`` as its last resort), their SHA-256 checked when ``verify``;
    - for the training split only: ``drop_last`` (no last partial batch), ``shard=(rank,
      world_size)`` (a data-parallel worker's part of every batch) and ``transforms`` (each a
      :data:`~common.data.Transform`, applied in order; the test split is never transformed);
    - ``prefetch``: batches prepared ahead in a background thread (the batches do not change).

    Checked when made: a bad value is a one-line ValueError.
    """

    batch_size: int
    resize: Optional[Union[int, Tuple[int, int]]] = None
    seed: int = 0
    subset: Optional[int] = None
    test_subset: Optional[int] = None
    subset_seed: int = 0
    synthetic: bool = False
    data_dir: Optional[str] = None
    download: bool = True
    verify: bool = True
    drop_last: bool = False
    shard: Tuple[int, int] = (0, 1)
    transforms: Tuple[Transform, ...] = ()
    prefetch: int = 2

    def __post_init__(self):
        check_batching(self.batch_size, self.seed, self.resize, self.prefetch, self.shard)
        check_seed(self.subset_seed, "subset_seed")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and not is_count(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("synthetic", "download", "verify", "drop_last"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        # Normalised, so that equal configurations compare equal: a path as text, tuples.
        object.__setattr__(self, "data_dir", None if self.data_dir is None else os.fspath(self.data_dir))
        object.__setattr__(self, "shard", (int(self.shard[0]), int(self.shard[1])))
        object.__setattr__(self, "transforms", check_transforms(self.transforms))

    def replace(self, **changes) -> "DataConfig":
        return dataclasses.replace(self, **changes)


def as_config(config: Union[DataConfig, int], **changes) -> DataConfig:
    """``config`` with ``changes`` to its fields; a batch size stands for ``DataConfig(batch_size)``."""
    if isinstance(config, DataConfig):
        return config.replace(**changes) if changes else config
    return DataConfig(config, **changes)


# --------------------------------------------------------------------------- checks


def is_count(value) -> bool:
    """A positive integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def check_seed(seed, name: str = "seed") -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")


def check_transforms(transforms) -> Tuple[Transform, ...]:
    if callable(transforms) or not all(callable(transform) for transform in transforms):
        raise ValueError(f"transforms must be a sequence of transform(batch, rng) -> batch, got {transforms!r}")
    return tuple(transforms)


def check_batching(batch_size, seed, resize, prefetch, shard) -> None:
    """The values a :class:`~common.data.BatchLoader` and a :class:`DataConfig` share, checked once."""
    if not is_count(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_seed(seed)
    if resize is not None:
        check_size(resize)
    if not isinstance(prefetch, (int, np.integer)) or isinstance(prefetch, bool) or prefetch < 0:
        raise ValueError(f"prefetch must be a non-negative integer (batches prepared ahead), got {prefetch!r}")
    try:
        rank, world_size = shard
    except (TypeError, ValueError):
        rank, world_size = -1, 0
    if not (is_count(world_size) and isinstance(rank, (int, np.integer)) and 0 <= rank < world_size):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    check_shardable(batch_size, world_size)
