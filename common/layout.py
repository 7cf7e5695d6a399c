"""Memory layouts: the canonical ones (NCHW batches, OIHW kernels, ``(out, in)`` dense weights) and
the channels-last ones of TensorFlow and JAX (NHWC batches, HWIO kernels, ``(in, out)`` dense),
converted in NumPy, once, at each backend's edge."""
from __future__ import annotations

import numpy as np

__all__ = ["to_canonical_layout", "from_canonical_layout", "nchw_to_nhwc", "nhwc_to_nchw"]


def to_canonical_layout(array) -> np.ndarray:
    """A float32 copy of a channels-last variable in canonical layout: conv kernels HWIO -> OIHW,
    dense ``(in, out)`` -> ``(out, in)``, vectors as they are."""
    array = np.asarray(array, dtype=np.float32)
    return np.array(array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T, order="C")


def from_canonical_layout(array) -> np.ndarray:
    """The inverse of :func:`to_canonical_layout`: a float32, C-contiguous channels-last array."""
    array = np.asarray(array, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T)


def nchw_to_nhwc(images: np.ndarray) -> np.ndarray:
    """A C-contiguous NHWC copy of an NCHW batch (no copy for one channel, where both layouts
    share one memory order)."""
    if images.shape[1] == 1:
        return np.ascontiguousarray(images).reshape(images.shape[0], images.shape[2], images.shape[3], 1)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def nhwc_to_nchw(images: np.ndarray) -> np.ndarray:
    """A C-contiguous NCHW copy of an NHWC batch (the inverse of :func:`nchw_to_nhwc`)."""
    if images.shape[3] == 1:
        return np.ascontiguousarray(images).reshape(images.shape[0], 1, images.shape[1], images.shape[2])
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
