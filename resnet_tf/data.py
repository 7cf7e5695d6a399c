"""Fashion-MNIST for TensorFlow: :mod:`common.data`'s batches, converted at one edge.

Every backend sees the same NCHW float32 batches in the same order (built once in
:mod:`common.data`); this module only turns them into TensorFlow tensors in
:data:`DATA_FORMAT` (NHWC) on the device, and back.
"""
from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from common.data import chapter_loaders
from common.layout import nchw_to_nhwc, nhwc_to_nchw

__all__ = ["to_tensor", "to_numpy", "load_data_fashion_mnist"]


def to_tensor(array, device=None):
    """NCHW image batch -> NHWC float32 tensor; 1-D labels -> int64 tensor; on ``device``.

    Labels are int64 because TensorFlow keeps int32 tensors in host memory even on a GPU.
    """
    array = np.asarray(array)
    with tf.device(device) if device else contextlib.nullcontext():
        if array.ndim == 4:
            return tf.convert_to_tensor(nchw_to_nhwc(array), dtype=tf.float32)
        if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
            return tf.convert_to_tensor(array, dtype=tf.int64)
        return tf.convert_to_tensor(array)


def to_numpy(tensor) -> np.ndarray:
    """The inverse of :func:`to_tensor`: NHWC image batches come back as NCHW NumPy."""
    array = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
    return nhwc_to_nchw(array) if array.ndim == 4 else array


def load_data_fashion_mnist(batch_size, resize=None, *, seed=0, data_dir=None, subset=None, test_subset=None,
                            synthetic=False):
    """The chapter's loader: ``(train_iter, test_iter)`` of NHWC tensors and int64 labels.

    The batches are :func:`common.data.chapter_loaders`' (the same pixels in the same order in
    every backend for ``seed``), converted with :func:`to_tensor` on the default device.
    ``subset`` / ``test_subset`` take class-stratified samples of the two splits.
    """
    return chapter_loaders(to_tensor, batch_size, resize, seed=seed, data_dir=data_dir, subset=subset,
                           test_subset=test_subset, synthetic=synthetic)
