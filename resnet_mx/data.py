"""Fashion-MNIST for MXNet: :mod:`common.data`'s batches, converted at one edge.

Every backend sees the same NCHW float32 batches in the same order (built once in
:mod:`common.data`); this module only turns them into MXNet arrays in
:data:`DATA_FORMAT` (NCHW, MXNet's own layout) on the device, and back: legacy NDArrays, or
``mxnet.numpy`` arrays in MXNet's NumPy mode (``npx.set_np()``), as Gluon's blocks then expect.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet.util import is_np_array

from common.data import chapter_loaders

__all__ = ["to_tensor", "to_numpy", "load_data_fashion_mnist"]


def _default_device():
    return mx.gpu() if mx.context.num_gpus() > 0 else mx.cpu()


def to_tensor(array, device=None):
    """NCHW image batch -> float32 array; 1-D integer labels -> int32 array; on ``device``.

    ``device`` is an ``mx.Context`` (``None``: the first GPU if MXNet sees one, else the CPU).
    Labels are int32, the type of Gluon's own datasets, which its loss and ``pick`` take.
    The arrays are of the active array mode: ``mxnet.numpy`` ones under ``npx.set_np()``.
    """
    array = np.asarray(array)
    ctx = device if device is not None else _default_device()
    module = mx.np if is_np_array() else mx.nd
    if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        return module.array(array, ctx=ctx, dtype=np.int32)
    return module.array(array, ctx=ctx, dtype=np.float32)


def to_numpy(tensor) -> np.ndarray:
    """The inverse of :func:`to_tensor`: NCHW MXNet arrays (either mode) come back as NCHW NumPy."""
    return tensor.asnumpy() if isinstance(tensor, mx.nd.NDArray) else np.asarray(tensor)


def load_data_fashion_mnist(batch_size, resize=None, *, seed=0, data_dir=None, subset=None, test_subset=None,
                            synthetic=False):
    """The chapter's loader: ``(train_iter, test_iter)`` of NCHW float32 and int32 label arrays on
    the default device, :func:`common.data.chapter_loaders`' batches converted with :func:`to_tensor`
    as they are taken (so in the array mode active then)."""
    return chapter_loaders(to_tensor, batch_size, resize, seed=seed, data_dir=data_dir, subset=subset,
                           test_subset=test_subset, synthetic=synthetic)
