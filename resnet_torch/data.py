"""Fashion-MNIST for PyTorch: :mod:`common.data`'s batches, converted at one edge.

Every backend sees the same NCHW float32 batches in the same order (built once in
:mod:`common.data`); this module only turns them into PyTorch tensors in
:data:`DATA_FORMAT` (NCHW, PyTorch's own layout) on the device, and back.
"""
from __future__ import annotations

import numpy as np
import torch

from common.data import chapter_loaders

__all__ = ["to_tensor", "to_numpy", "load_data_fashion_mnist"]


def _default_device():
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def to_tensor(array, device=None):
    """NCHW image batch -> float32 tensor; 1-D integer labels -> int64 tensor; on ``device``.

    ``device`` is a ``torch.device`` or its name (``None``: the first GPU if PyTorch sees one,
    else the CPU). On the CPU the tensor shares the NumPy batch's memory (no copy); labels are
    int64, the type ``CrossEntropyLoss`` takes.
    """
    array = np.asarray(array)
    if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64, copy=False)
    else:
        array = array.astype(np.float32, copy=False)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()  # from_numpy needs writeable, ordered memory
    device = torch.device(device) if device is not None else _default_device()
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        # From pageable memory .to() waits for the GPU to finish the previous step; a pinned
        # copy goes asynchronously, so the host queues the next step while the GPU works.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_numpy(tensor) -> np.ndarray:
    """The inverse of :func:`to_tensor`: NCHW tensors come back as NCHW NumPy."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().contiguous().numpy()
    return np.asarray(tensor)


def load_data_fashion_mnist(batch_size, resize=None, *, seed=0, data_dir=None, subset=None, test_subset=None,
                            synthetic=False):
    """The chapter's loader: ``(train_iter, test_iter)`` of NCHW tensors and int64 labels on the
    default device, :func:`common.data.chapter_loaders`' batches converted with :func:`to_tensor`."""
    return chapter_loaders(to_tensor, batch_size, resize, seed=seed, data_dir=data_dir, subset=subset,
                           test_subset=test_subset, synthetic=synthetic)
