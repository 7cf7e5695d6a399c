"""Batches: seeded order, data-parallel shards, transforms, prefetching; and the loaders of the two splits."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np

from ..sharding import shard_slices
from .config import DataConfig, as_config, check_batching, check_seed, check_transforms
from .idx import load_split
from .synthetic import synthetic_split
from .transforms import Batch, apply_transforms, preprocessing

__all__ = ["subset_indices", "BatchLoader", "ConvertedLoader", "fashion_mnist_loader", "fashion_mnist_loaders",
           "chapter_loaders"]


def subset_indices(labels, n: int, seed: Optional[int] = None) -> np.ndarray:
    """Sorted indices of ``n`` examples: the first ``n``, or with ``seed`` a stratified sample.

    The stratified sample keeps each class's share (largest-remainder rounding, so the counts
    differ by at most one from the exact shares) and picks each class's examples with
    ``default_rng(seed)``; the same seed gives the same subset on every NumPy.
    """
    labels = np.asarray(labels)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= len(labels):
        raise ValueError(f"subset must be an integer from 1 to {len(labels):,} (the number of examples), got {n!r}")
    if seed is None:
        return np.arange(n)
    check_seed(seed)
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts * n / len(labels)
    quotas = np.floor(shares).astype(np.int64)
    # Largest remainders get the leftover places; ties go to the smaller class label.
    leftover = np.argsort(-(shares - quotas), kind="stable")[: n - int(quotas.sum())]
    quotas[leftover] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for label, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == label)
        chosen.append(members[rng.permutation(len(members))[:quota]])
    return np.sort(np.concatenate(chosen))


class BatchLoader:
    """Batches of ``(images, labels)``: float32 NCHW NumPy and int64, the same in every backend.

    ``images`` are uint8 ``(N, 28, 28)`` (or float in [0, 1]); each batch goes through one
    preprocessing step chosen here, :func:`~common.data.transforms.preprocessing` (scaled to
    [0, 1] and, with ``resize``, resized), one batch at a time (so 60,000 images at 96 x 96,
    2.2 GB of float32, never exist at once). With ``shuffle`` each epoch visits the examples in
    the order ``np.random.default_rng([seed, epoch]).permutation(N)``, so the order depends only
    on seed and epoch. The last partial batch is kept unless ``drop_last``.

    ``transforms`` (each ``transform(batch, rng) -> batch``, see :mod:`common.data.transforms`)
    then change batch ``index`` of ``epoch`` with generators drawn from ``(seed, epoch, index)``
    alone: the batches stay the same whatever the prefetching, the resuming or the sharding.

    Epochs: the first ``iter()`` uses epoch 0; every later ``iter()`` advances the epoch by
    one, like a shuffling DataLoader, so ``for epoch in ...: for X, y in loader:`` sees a new
    order each epoch. ``set_epoch(e)`` makes the next ``iter()`` use epoch ``e`` (for resuming),
    ``set_epoch(e, k)`` starts it at batch ``k`` (for resuming mid-epoch).

    ``prefetch=k`` prepares up to ``k`` batches ahead in a background thread (NumPy releases
    the GIL, so this overlaps with the framework's work); the batches are identical to
    ``prefetch=0``, and the thread stops when the iteration ends, is abandoned (``break``, an
    exception, garbage collection) or is closed.

    ``shard=(rank, world_size)``: data-parallel worker ``rank``'s part of every batch, by
    :func:`~common.sharding.shard_slices` (``batch_size`` must divide by ``world_size``; the
    examples of a last partial batch that do not divide evenly are skipped, and so is a last
    batch smaller than ``world_size``). The global order is the one above, whatever
    ``world_size``; only the shard's examples are decoded, resized and transformed.
    """

    def __init__(self, images, labels, batch_size: int, shuffle: bool = True, seed: int = 0,
                 resize: Optional[Union[int, Tuple[int, int]]] = None, drop_last: bool = False, prefetch: int = 0,
                 shard: Tuple[int, int] = (0, 1), transforms=()):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] != 1):
            raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},) to match {len(images)} images, "
                             f"got {labels.shape}")
        check_batching(batch_size, seed, resize, prefetch, shard)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.resize, self.drop_last, self.prefetch = resize, bool(drop_last), int(prefetch)
        self.shard = (int(shard[0]), int(shard[1]))
        #: ``images -> float32 NCHW``, the same for every batch.
        self.preprocess = preprocessing(resize)
        self.transforms = check_transforms(transforms)
        self._epoch, self._first_batch, self._started, self._epoch_was_set = 0, 0, False, False

    @property
    def num_examples(self) -> int:
        """Examples per epoch (those in a dropped last batch included)."""
        return len(self.labels)

    @property
    def epoch(self) -> int:
        """The epoch of the current (or, before the first, the next) iteration."""
        return self._epoch

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Make the next ``iter()`` use ``epoch``'s order from its batch ``first_batch`` on (later
        ones continue with the next epoch, from its start)."""
        check_seed(epoch, "epoch")
        if not isinstance(first_batch, (int, np.integer)) or isinstance(first_batch, bool) \
                or not 0 <= first_batch <= len(self):
            raise ValueError(f"first_batch must be an integer from 0 to {len(self)} (batches per epoch), "
                             f"got {first_batch!r}")
        self._epoch, self._first_batch, self._epoch_was_set = int(epoch), int(first_batch), True

    def __len__(self) -> int:
        full, partial = divmod(self.num_examples, self.batch_size)
        return full + (1 if partial >= self.shard[1] and not self.drop_last else 0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The example indices in the order ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def make_batch(self, indices) -> Tuple[np.ndarray, np.ndarray]:
        """The preprocessed batch of the examples at ``indices`` (not transformed)."""
        return self.preprocess(self.images[indices]), self.labels[indices].astype(np.int64)

    def __iter__(self):
        if self._started and not self._epoch_was_set:
            self._epoch += 1
        first_batch, self._first_batch = self._first_batch, 0
        self._started, self._epoch_was_set = True, False
        batches = self._batches(self._epoch, first_batch)
        return _Prefetcher(batches, self.prefetch) if self.prefetch else batches

    def _batches(self, epoch: int, first_batch: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        order = self.epoch_order(epoch)
        rank, world_size = self.shard
        for index in range(first_batch, len(self)):
            indices = order[index * self.batch_size:(index + 1) * self.batch_size]
            part = shard_slices(len(indices), world_size)[rank]
            images, labels = self.make_batch(indices[part])
            if self.transforms:
                batch = apply_transforms(self.transforms, Batch(images, labels, part, len(indices)), self.seed,
                                         epoch, index)
                images, labels = batch.images, batch.labels
            yield images, labels

    def __repr__(self) -> str:
        shard = f", shard={self.shard}" if self.shard[1] > 1 else ""
        transforms = (f", transforms=({', '.join(getattr(t, '__name__', repr(t)) for t in self.transforms)})"
                      if self.transforms else "")
        return (f"BatchLoader({self.num_examples} examples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, resize={self.resize}, drop_last={self.drop_last}, prefetch={self.prefetch}"
                f"{shard}{transforms})")


def _put_unless_stopped(slots: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            slots.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


def _produce(batches, slots: queue.Queue, stop: threading.Event) -> None:
    # Holds no reference to the _Prefetcher, so an abandoned one is collected and stops this.
    try:
        for batch in batches:
            if not _put_unless_stopped(slots, ("batch", batch), stop):
                return
        _put_unless_stopped(slots, ("end", None), stop)
    except BaseException as error:  # handed to the consumer, raised there
        _put_unless_stopped(slots, ("error", error), stop)
    finally:
        batches.close()


class _Prefetcher:
    """Iterates ``batches`` (a generator) in a background thread, ``depth`` items ahead."""

    def __init__(self, batches, depth: int):
        self._slots: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_produce, args=(batches, self._slots, self._stop),
                                        name="BatchLoader-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            raise StopIteration
        kind, value = self._slots.get()
        if kind == "batch":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the background thread and wait for it (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class ConvertedLoader:
    """A :class:`BatchLoader` whose batches pass through ``convert(images, labels)``.

    What each backend's ``load_data_fashion_mnist`` returns: ``convert`` turns the NumPy batch
    into the framework's tensors (NHWC for TensorFlow), in the consuming thread (frameworks
    keep per-thread state such as the default device). Epochs, length and example count are
    the wrapped loader's, available as ``.loader``.
    """

    def __init__(self, loader: BatchLoader, convert: Callable):
        self.loader, self.convert = loader, convert

    def __iter__(self):
        return self._converted(iter(self.loader))  # iter() now: the epoch advances now

    def _converted(self, batches):
        try:
            for images, labels in batches:
                yield self.convert(images, labels)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_examples(self) -> int:
        return self.loader.num_examples

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.loader.set_epoch(epoch, first_batch)

    def __repr__(self) -> str:
        return f"ConvertedLoader({self.loader!r}, {getattr(self.convert, '__name__', self.convert)!r})"


def fashion_mnist_loader(split: str, config: Union[DataConfig, int], /, **changes) -> BatchLoader:
    """The loader of one split: "train" shuffles with ``config.seed`` and takes ``subset``,
    ``drop_last``, ``shard`` and ``transforms``; "test" keeps its order, takes ``test_subset``
    and is never transformed (every data-parallel worker evaluates the whole test set).

    ``config`` is a :class:`DataConfig`, or a batch size with the other fields as keywords
    (``fashion_mnist_loader("train", 32, synthetic=True)``); ``changes`` replace its fields.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    config = as_config(config, **changes)
    train = split == "train"
    subset = config.subset if train else config.test_subset
    if config.synthetic:
        images, labels = synthetic_split(split, subset)
    else:
        images, labels = load_split(split, config.data_dir, config.verify, config.download)
        if subset is not None:
            chosen = subset_indices(labels, subset, seed=config.subset_seed)
            images, labels = images[chosen], labels[chosen]
        labels = labels.astype(np.int64)
    return BatchLoader(images, labels, config.batch_size, shuffle=train, seed=config.seed, resize=config.resize,
                       drop_last=config.drop_last and train, prefetch=config.prefetch,
                       shard=config.shard if train else (0, 1), transforms=config.transforms if train else ())


def fashion_mnist_loaders(config: Union[DataConfig, int], /, **changes) -> Tuple[BatchLoader, BatchLoader]:
    """``(train_loader, test_loader)``: the one data pipeline every backend and the training use.

    :func:`fashion_mnist_loader` of both splits for ``config`` (a :class:`DataConfig`, or a batch
    size with the other fields as keywords: ``fashion_mnist_loaders(32, subset=64, synthetic=True)``).
    """
    config = as_config(config, **changes)
    return fashion_mnist_loader("train", config), fashion_mnist_loader("test", config)


def chapter_loaders(to_tensor: Callable, batch_size: int, resize: Optional[int] = None,
                    **options) -> Tuple[ConvertedLoader, ConvertedLoader]:
    """The chapter's ``load_data_fashion_mnist`` for a backend whose ``to_tensor(array)`` makes
    its framework's tensor (images in its ``DATA_FORMAT``, on the default device).

    ``(train_iter, test_iter)``: :func:`fashion_mnist_loaders`' batches for
    ``DataConfig(batch_size, resize, **options)`` (the same pixels in the same order in every
    backend for ``seed``), each converted as it is taken.
    """
    train_loader, test_loader = fashion_mnist_loaders(DataConfig(batch_size, resize=resize, **options))

    def convert(images, labels):
        return to_tensor(images), to_tensor(labels)

    return ConvertedLoader(train_loader, convert), ConvertedLoader(test_loader, convert)
