"""Parsing Fashion-MNIST's IDX files into NumPy arrays, validated, and loading a split."""
from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np

from .files import (
    FILES,
    IMAGE_SIZE,
    NUM_CLASSES,
    DataError,
    file_in,
    find_data_dir,
    fix_for,
    read_content,
    verify_content,
)

__all__ = ["read_idx", "load_fashion_mnist", "load_split"]

_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def read_idx(path, verify: bool = True) -> np.ndarray:
    """Parse one Fashion-MNIST IDX file (``.gz`` or not) into a read-only array.

    Images (magic 2051) come back as uint8 ``(N, 28, 28)``, labels (magic 2049) as uint8
    ``(N,)`` with values 0..9. The header's counts must match the file's length. With
    ``verify`` the decompressed content must also match :data:`~common.data.files.CHECKSUMS`
    for the file's name (files with other names cannot be verified and are refused; pass
    ``verify=False`` for your own IDX files). Any problem raises :class:`DataError`.
    """
    path = os.fspath(path)
    content = read_content(path)
    fix = fix_for(path)
    if len(content) < 8:
        raise DataError(f"{path}: is too short for an IDX header ({len(content)} bytes); {fix}")
    magic, count = (int(value) for value in np.frombuffer(content, ">u4", 2))
    if magic == _IMAGES_MAGIC:
        if len(content) < 16:
            raise DataError(f"{path}: is too short for an IDX image header ({len(content)} bytes); {fix}")
        rows, cols = (int(value) for value in np.frombuffer(content, ">u4", 2, offset=8))
        if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{path}: holds {rows}x{cols} images, expected 28x28; {fix}")
        header, shape = 16, (count, rows, cols)
    elif magic == _LABELS_MAGIC:
        header, shape = 8, (count,)
    else:
        raise DataError(
            f"{path}: has magic number {magic}, expected {_IMAGES_MAGIC} (IDX images) or "
            f"{_LABELS_MAGIC} (IDX labels): not an IDX file; {fix}"
        )
    expected_length = header + int(np.prod(shape))
    if len(content) < expected_length:
        raise DataError(
            f"{path}: is truncated: its header promises {count:,} {'images' if header == 16 else 'labels'} "
            f"({expected_length:,} bytes) but it holds {len(content):,} bytes; {fix}"
        )
    if len(content) > expected_length:
        raise DataError(f"{path}: has {len(content) - expected_length:,} bytes beyond the {count:,} items its header "
                        f"promises; {fix}")
    array = np.frombuffer(content, np.uint8, offset=header).reshape(shape)
    if header == 8 and count and int(array.max()) >= NUM_CLASSES:
        raise DataError(f"{path}: holds label {int(array.max())}, expected labels 0..9; {fix}")
    if verify:
        verify_content(content, path)
    return array


# Parsed files by (path, size, mtime, verify): parsing and hashing the training images takes
# about 0.3 s, and tests and backends load the same files many times in one process.
_PARSED: Dict[tuple, np.ndarray] = {}


def _read_idx_cached(path: str, verify: bool) -> np.ndarray:
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, verify)
    if key not in _PARSED:
        _PARSED[key] = read_idx(path, verify)
    return _PARSED[key]


def load_split(split: str, data_dir=None, verify: bool = True, download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Read-only uint8 images and labels of ``split``, parsed once per process and shared between callers."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_data_dir(data_dir, download=download)
    images_path, labels_path = (file_in(directory, name) for name in FILES[split])
    images = _read_idx_cached(images_path, verify)
    labels = _read_idx_cached(labels_path, verify)
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds labels, not images; {fix_for(images_path)}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds images, not labels; {fix_for(labels_path)}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: holds {len(images):,} images but {labels_path} holds {len(labels):,} labels; "
            f"the two files do not belong together: {fix_for(images_path)}"
        )
    return images, labels


def load_fashion_mnist(split: str = "train", data_dir=None, verify: bool = True, download: bool = True):
    """The ``split`` ("train" or "test") as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Finds the files with :func:`~common.data.files.find_data_dir` (``data_dir`` and ``download``
    are passed on) and reads them with :func:`read_idx` (``verify`` checks the SHA-256). Raises
    :class:`DataError` for any problem with the data.
    """
    images, labels = load_split(split, data_dir, verify, download)
    return images.copy(), labels.astype(np.int64)
