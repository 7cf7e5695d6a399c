"""Fashion-MNIST for every backend: one way to find, check, preprocess, transform and batch the data.

In the book each framework loads Fashion-MNIST its own way (TensorFlow pads instead of
resizing and shuffles whole batches, PyTorch and MXNet resize with their own transforms), so
the three runs never see the same pixels in the same order. Here the data comes from this
package, once, as NumPy: every backend converts the same NCHW float32 batches at one edge
(:class:`ConvertedLoader`), so for the same seed every backend trains on bit-identical
batches in the same order. It imports no framework and gives the same numbers on NumPy 1.23
and 2.x.

- :mod:`~common.data.files`: where the four files are looked for, downloading them as a last
  resort, checking their SHA-256; :class:`DataError` (one line: the file, what is wrong, the fix).
- :mod:`~common.data.idx`: parsing and validating the IDX files.
- :mod:`~common.data.transforms`: the preprocessing (``/ 255``, optional bilinear resize equal
  to PyTorch's) and the transform hook, ``transform(batch, rng) -> batch`` with a generator
  seeded by (seed, epoch, batch index), which keeps transformed batches the same in every
  backend, after a resume and under data-parallel sharding.
- :mod:`~common.data.augment`: the training-set augmentation a run can ask for (random crop with
  zero padding, horizontal flip, random erasing: torchvision's, as seeded transforms).
- :mod:`~common.data.synthetic`: a learnable stand-in for offline use and tests.
- :mod:`~common.data.config`: :class:`DataConfig`, everything that decides the batches.
- :mod:`~common.data.loader`: :class:`BatchLoader` (order ``default_rng([seed, epoch])``,
  shards, transforms, prefetching) and :func:`fashion_mnist_loaders`, which puts it together.
"""
from .config import DataConfig
from .files import (
    CHECKSUMS,
    CLASS_NAMES,
    FILES,
    MIRRORS,
    SYSTEM_DATA_DIR,
    DataError,
    cache_dir,
    download_fashion_mnist,
    find_data_dir,
)
from .idx import load_fashion_mnist, read_idx
from .loader import (
    BatchLoader,
    ConvertedLoader,
    chapter_loaders,
    fashion_mnist_loader,
    fashion_mnist_loaders,
    subset_indices,
)
from .synthetic import SYNTHETIC_SIZES, synthetic_fashion_mnist
from .transforms import (
    TRANSFORM_OPTIONS,
    Batch,
    Transform,
    TransformOption,
    build_transforms,
    check_requested,
    interpolation_matrix,
    interpolation_taps,
    resize_images,
    to_float,
    transform_generators,
)

__all__ = [
    "CLASS_NAMES",
    "FILES",
    "CHECKSUMS",
    "MIRRORS",
    "SYSTEM_DATA_DIR",
    "DataError",
    "cache_dir",
    "find_data_dir",
    "download_fashion_mnist",
    "read_idx",
    "load_fashion_mnist",
    "interpolation_taps",
    "interpolation_matrix",
    "to_float",
    "resize_images",
    "subset_indices",
    "SYNTHETIC_SIZES",
    "synthetic_fashion_mnist",
    "BatchLoader",
    "ConvertedLoader",
    "chapter_loaders",
    "fashion_mnist_loader",
    "fashion_mnist_loaders",
    "DataConfig",
    "Batch",
    "Transform",
    "transform_generators",
    "TransformOption",
    "TRANSFORM_OPTIONS",
    "check_requested",
    "build_transforms",
]
