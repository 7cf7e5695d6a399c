"""Fashion-MNIST for JAX: :mod:`common.data`'s batches, converted at one edge.

Every backend sees the same NCHW float32 batches in the same order (built once in
:mod:`common.data`); this module only turns them into JAX arrays in :data:`DATA_FORMAT`
(NHWC) on the device, and back.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.data import chapter_loaders
from common.layout import nchw_to_nhwc, nhwc_to_nchw

__all__ = ["to_tensor", "to_numpy", "load_data_fashion_mnist"]


def to_tensor(array, device=None):
    """NCHW image batch -> NHWC float32 array; 1-D integer labels -> int32 array; on ``device``
    (a ``jax.Device``; None: JAX's default device).

    Labels are int32: JAX's integers are 32-bit unless ``jax_enable_x64`` is set.
    """
    array = np.asarray(array)
    if array.ndim == 4:
        array = nchw_to_nhwc(array).astype(np.float32, copy=False)
    elif array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int32, copy=False)
    return jax.device_put(array, device) if device is not None else jnp.asarray(array)


def to_numpy(tensor) -> np.ndarray:
    """The inverse of :func:`to_tensor`: NHWC image batches come back as NCHW NumPy."""
    array = np.asarray(tensor)
    return nhwc_to_nchw(array) if array.ndim == 4 else array


def load_data_fashion_mnist(batch_size, resize=None, *, seed=0, data_dir=None, subset=None, test_subset=None,
                            synthetic=False):
    """The chapter's loader: ``(train_iter, test_iter)`` of NHWC arrays and int32 labels.

    The batches are :func:`common.data.chapter_loaders`' (the same pixels in the same order in
    every backend for ``seed``), converted with :func:`to_tensor` on the default device.
    ``subset`` / ``test_subset`` take class-stratified samples of the two splits.
    """
    return chapter_loaders(to_tensor, batch_size, resize, seed=seed, data_dir=data_dir, subset=subset,
                           test_subset=test_subset, synthetic=synthetic)
