"""Fashion-MNIST for MXNet: :mod:`common.data`'s batches, converted at one edge.

Every backend sees the same NCHW float32 batches in the same order (built once in
:mod:`common.data`); this module only turns them into MXNet NDArrays in
:data:`DATA_FORMAT` (NCHW, MXNet's own layout) on the device, and back.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np

from common.data import ConvertedLoader, fashion_mnist_loaders

__all__ = ["to_tensor", "to_numpy", "load_data_fashion_mnist"]


def _default_context():
    return mx.gpu() if mx.context.num_gpus() > 0 else mx.cpu()


def to_tensor(array, device=None):
    """NCHW image batch -> float32 NDArray; 1-D integer labels -> int32 NDArray; on ``device``.

    ``device`` is an ``mx.Context`` (``None``: the first GPU if MXNet sees one, else the CPU).
    Labels are int32, the type of Gluon's own datasets, which its loss and ``pick`` take.
    """
    array = np.asarray(array)
    ctx = device if device is not None else _default_context()
    if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        return mx.nd.array(array, ctx=ctx, dtype=np.int32)
    return mx.nd.array(array, ctx=ctx, dtype=np.float32)


def to_numpy(tensor) -> np.ndarray:
    """The inverse of :func:`to_tensor`: NCHW NDArrays come back as NCHW NumPy."""
    return tensor.asnumpy() if isinstance(tensor, mx.nd.NDArray) else np.asarray(tensor)


def load_data_fashion_mnist(batch_size, resize=None, *, seed=0, data_dir=None, subset=None, test_subset=None,
                            synthetic=False):
    """The chapter's loader: ``(train_iter, test_iter)`` of NCHW NDArrays and int32 labels.

    The batches are :func:`common.data.fashion_mnist_loaders`' (the same pixels in the same
    order in every backend for ``seed``), converted with :func:`to_tensor` on the default
    device. ``subset`` / ``test_subset`` take class-stratified samples of the two splits.
    """
    train_loader, test_loader = fashion_mnist_loaders(
        batch_size, resize=resize, seed=seed, subset=subset, test_subset=test_subset, data_dir=data_dir,
        synthetic=synthetic,
    )

    def convert(images, labels):
        return to_tensor(images), to_tensor(labels)

    return ConvertedLoader(train_loader, convert), ConvertedLoader(test_loader, convert)
