"""Fashion-MNIST for every backend: one way to find, check, preprocess and batch the data.

In the book each framework loads Fashion-MNIST its own way (TensorFlow pads instead of
resizing and shuffles whole batches, PyTorch and MXNet resize with their own transforms), so
the three runs never see the same pixels in the same order. Here the data comes from this
module, once, as NumPy: every backend converts the same NCHW float32 batches at one edge
(:class:`ConvertedLoader`), so for the same seed every backend trains on bit-identical
batches in the same order.

- Finding the data: :func:`find_data_dir` looks in a fixed order and downloads only as a
  last resort; :func:`load_fashion_mnist` parses the IDX files itself, validates them and
  checks their SHA-256, raising :class:`DataError` (one line: the file, what is wrong, how
  to fix it) instead of training on wrong data.
- Preprocessing: uint8 -> float32 in [0, 1] (``/ 255``, as ``ToTensor`` does) and an
  optional bilinear resize, :func:`resize_images`, equal to PyTorch's
  ``interpolate(mode="bilinear", align_corners=False)``.
- Order: :class:`BatchLoader` shuffles examples with ``default_rng([seed, epoch])``, so the
  order depends only on seed and epoch (a resumed run sees what an uninterrupted one saw).
- :func:`fashion_mnist_loaders` puts it together; :func:`synthetic_fashion_mnist` stands in
  for the real data offline and in tests.

This module imports no framework and gives the same numbers on NumPy 1.23 and 2.x.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import queue
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .sharding import check_shardable, shard_slices

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
    "interpolation_matrix",
    "to_float",
    "resize_images",
    "subset_indices",
    "synthetic_fashion_mnist",
    "BatchLoader",
    "ConvertedLoader",
    "chapter_loaders",
    "fashion_mnist_loader",
    "fashion_mnist_loaders",
]

#: Label -> name, as in the data set's documentation.
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Split -> (images file, labels file), without the optional ``.gz``.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: File -> (SHA-256, size) of the *decompressed* content. Debian recompresses the ``.gz``
#: files, so their bytes differ from the official ones; the content does not.
CHECKSUMS = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}

#: Where to download ``<file>.gz`` from, in order: the official location, then a mirror.
MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]

#: Where Debian's package ``dataset-fashion-mnist`` installs the data set.
SYSTEM_DATA_DIR = "/usr/share/datasets/fashion-mnist"

#: The environment variable that names a directory holding the four files.
ENV_VAR = "FASHION_MNIST_DIR"

_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_IMAGE_SIZE = 28
_NUM_CLASSES = len(CLASS_NAMES)
_FIXES = (
    "install the Debian package (apt-get install dataset-fashion-mnist) "
    f"or put the four IDX files in a directory and set {ENV_VAR} to it"
)
_DOWNLOAD_TIMEOUT_S = 30
# Patched by the tests, which never reach the network.
_open_url = urllib.request.urlopen


class DataError(RuntimeError):
    """Missing, unreadable or wrong data: one line naming the file, the problem and the fix."""


# --------------------------------------------------------------------------- finding the data


def cache_dir() -> str:
    """The download directory: ``$XDG_CACHE_HOME/resnet-fmnist/fashion-mnist`` (or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore unset, empty or relative values
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet-fmnist", "fashion-mnist")


def _file_in(directory: str, name: str) -> Optional[str]:
    """The path of ``name`` or ``name.gz`` in ``directory`` (uncompressed first), or None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _missing_files(directory: str) -> List[str]:
    return [name for names in FILES.values() for name in names if _file_in(directory, name) is None]


def _require_complete(directory: str, origin: str) -> str:
    if not os.path.isdir(directory):
        raise DataError(f"{origin} {directory} is not a directory; point it at the directory that holds the four Fashion-MNIST IDX files")
    missing = _missing_files(directory)
    if missing:
        raise DataError(
            f"{origin} {directory} lacks {', '.join(missing)} (with or without .gz); "
            f"put the four Fashion-MNIST IDX files there or {_FIXES}"
        )
    return directory


def find_data_dir(data_dir=None, download: bool = True) -> str:
    """The directory holding the four Fashion-MNIST files, looking in this order.

    1. ``data_dir``, when given, and 2. ``$FASHION_MNIST_DIR``, when set: these must hold all
       four files (``.gz`` or not), since a typo should fail rather than quietly fall through;
    3. the user cache, :func:`cache_dir`; 4. :data:`SYSTEM_DATA_DIR` (Debian's
       ``dataset-fashion-mnist``); 5. only then, if ``download``, download the missing files
       into the cache (:func:`download_fashion_mnist`).

    Raises :class:`DataError` listing the places looked in and the two fixes when nothing is
    found and downloading is off or fails.
    """
    if data_dir is not None:
        return _require_complete(os.fspath(data_dir), "data_dir")
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:
        return _require_complete(from_env, ENV_VAR + "=")
    cache = cache_dir()
    for directory in (cache, SYSTEM_DATA_DIR):
        if os.path.isdir(directory) and not _missing_files(directory):
            return directory
    looked_in = f"{ENV_VAR} (not set), {cache}, {SYSTEM_DATA_DIR}"
    if not download:
        raise DataError(f"Fashion-MNIST not found and downloading is off; looked in {looked_in}; to fix: {_FIXES}")
    try:
        download_fashion_mnist(cache)
    except DataError as error:
        raise DataError(f"Fashion-MNIST not found; looked in {looked_in}; {error}") from None
    return cache


def download_fashion_mnist(directory: str, mirrors: Optional[Sequence[str]] = None) -> str:
    """Download the files missing from ``directory``, each verified before it appears there.

    Each file streams into a temporary file beside its destination (with a progress bar when
    tqdm is installed and stderr is a terminal), is decompressed and checked against
    :data:`CHECKSUMS`, and only then renamed into place; an interrupted, corrupt or wrong
    download leaves nothing behind. Mirrors are tried in order (default :data:`MIRRORS`).
    """
    mirrors = list(MIRRORS if mirrors is None else mirrors)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the download directory {directory} ({error}); to fix: {_FIXES}") from None
    for name in _missing_files(directory):
        destination = os.path.join(directory, name + ".gz")
        failures = []
        for mirror in mirrors:
            url = mirror + name + ".gz"
            try:
                _download_verified(url, destination, name)
                break
            except (OSError, http.client.HTTPException, ValueError, DataError) as error:  # URLError is an OSError
                failures.append(f"{url}: {_reason(error)}")
        else:
            raise DataError(f"downloading {name}.gz failed ({'; '.join(failures) or 'no mirrors'}); to fix: {_FIXES}")
    return directory


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return f"unreachable ({error.reason})"
    return str(error) or type(error).__name__


def _download_verified(url: str, destination: str, name: str) -> None:
    directory = os.path.dirname(destination)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            with _ProgressBar(name + ".gz", int(total) if total and total.isdigit() else None) as progress:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    progress(len(chunk))
        what = f"the download from {url}"
        content = _read_content(tmp, compressed=True, label=what, fix="the server sent something else")
        _check_checksum(content, name, what, "the server sent another file (a proxy serving digit MNIST under these names?)")
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _ProgressBar:
    """tqdm's bar (bytes), or nothing where tqdm is missing or stderr is not a terminal."""

    def __init__(self, description: str, total: Optional[int]):
        self._bar = None
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True, disable=None, file=sys.stderr, leave=False)

    def __enter__(self):
        return self._bar.update if self._bar is not None else (lambda n: None)

    def __exit__(self, *exc_info):
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- reading IDX files


def _fix_for(path: str) -> str:
    """How to replace a bad file, depending on where it came from."""
    where = os.path.dirname(os.path.abspath(path))
    if where == os.path.abspath(cache_dir()):
        return "delete the file and run again to download it afresh"
    if where == os.path.abspath(SYSTEM_DATA_DIR):
        return "reinstall the Debian package (apt-get install --reinstall dataset-fashion-mnist)"
    return "replace it with the official file (or delete it and run again to download it)"


def _read_content(path: str, compressed: Optional[bool] = None, label: Optional[str] = None, fix: Optional[str] = None) -> bytes:
    """The file's bytes, gunzipped if ``compressed`` (default: its name ends in ``.gz``).

    Any failure raises DataError starting with ``label`` (default: the path) and ending with
    ``fix`` (default: how to replace a file in that place).
    """
    label = path if label is None else label
    fix = _fix_for(path) if fix is None else fix
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"{label}: cannot be read ({error.strerror or error}); check its permissions or {fix}") from None
    if not (path.endswith(".gz") if compressed is None else compressed):
        if raw[:2] == b"\x1f\x8b":
            raise DataError(f"{label}: is gzip-compressed but its name does not end in .gz; rename it to {os.path.basename(path)}.gz")
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        problem = "is a truncated gzip file (an interrupted download or copy?)"
    except gzip.BadGzipFile as error:
        problem = f"is not a valid gzip file ({error})"
    except zlib.error as error:
        problem = f"has corrupt gzip data ({error})"
    raise DataError(f"{label}: {problem}; {fix}")


def _check_checksum(content: bytes, name: str, what: str, fix: str) -> None:
    expected_sha256, expected_size = CHECKSUMS[name]
    if len(content) != expected_size or hashlib.sha256(content).hexdigest() != expected_sha256:
        raise DataError(
            f"{what}: content does not match Fashion-MNIST's {name} "
            f"({len(content):,} bytes, SHA-256 {hashlib.sha256(content).hexdigest()[:12]}...; expected "
            f"{expected_size:,} bytes, {expected_sha256[:12]}...); {fix}"
        )


def read_idx(path, verify: bool = True) -> np.ndarray:
    """Parse one Fashion-MNIST IDX file (``.gz`` or not) into a read-only array.

    Images (magic 2051) come back as uint8 ``(N, 28, 28)``, labels (magic 2049) as uint8
    ``(N,)`` with values 0..9. The header's counts must match the file's length. With
    ``verify`` the decompressed content must also match :data:`CHECKSUMS` for the file's
    name (files with other names cannot be verified and are refused; pass ``verify=False``
    for your own IDX files). Any problem raises :class:`DataError`.
    """
    path = os.fspath(path)
    content = _read_content(path)
    fix = _fix_for(path)
    if len(content) < 8:
        raise DataError(f"{path}: is too short for an IDX header ({len(content)} bytes); {fix}")
    magic, count = (int(value) for value in np.frombuffer(content, ">u4", 2))
    if magic == _IMAGES_MAGIC:
        if len(content) < 16:
            raise DataError(f"{path}: is too short for an IDX image header ({len(content)} bytes); {fix}")
        rows, cols = (int(value) for value in np.frombuffer(content, ">u4", 2, offset=8))
        if (rows, cols) != (_IMAGE_SIZE, _IMAGE_SIZE):
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
        raise DataError(f"{path}: has {len(content) - expected_length:,} bytes beyond the {count:,} items its header promises; {fix}")
    array = np.frombuffer(content, np.uint8, offset=header).reshape(shape)
    if header == 8 and count and int(array.max()) >= _NUM_CLASSES:
        raise DataError(f"{path}: holds label {int(array.max())}, expected labels 0..9; {fix}")
    if verify:
        name = os.path.basename(path)[: -len(".gz")] if path.endswith(".gz") else os.path.basename(path)
        if name not in CHECKSUMS:
            raise DataError(f"{path}: is not one of the Fashion-MNIST files ({', '.join(CHECKSUMS)}), so it cannot be verified; rename it or pass verify=False")
        _check_checksum(content, name, path, f"{fix}, or pass verify=False if these are your own IDX files")
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


def _load_split(split: str, data_dir, verify: bool, download: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Read-only uint8 images and labels of ``split``, shared between callers."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_data_dir(data_dir, download=download)
    images_path, labels_path = (_file_in(directory, name) for name in FILES[split])
    images = _read_idx_cached(images_path, verify)
    labels = _read_idx_cached(labels_path, verify)
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds labels, not images; {_fix_for(images_path)}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds images, not labels; {_fix_for(labels_path)}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: holds {len(images):,} images but {labels_path} holds {len(labels):,} labels; "
            f"the two files do not belong together: {_fix_for(images_path)}"
        )
    return images, labels


def load_fashion_mnist(split: str = "train", data_dir=None, verify: bool = True, download: bool = True):
    """The ``split`` ("train" or "test") as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Finds the files with :func:`find_data_dir` (``data_dir`` and ``download`` are passed on)
    and reads them with :func:`read_idx` (``verify`` checks the SHA-256). Raises
    :class:`DataError` for any problem with the data.
    """
    images, labels = _load_split(split, data_dir, verify, download)
    return images.copy(), labels.astype(np.int64)


# --------------------------------------------------------------------------- preprocessing


@functools.lru_cache(maxsize=64)
def interpolation_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres as two taps per output pixel.

    Returns ``(first, second, weight_first, weight_second)``: output pixel ``i`` is
    ``weight_first[i] * input[first[i]] + weight_second[i] * input[second[i]]``. It samples
    the input at ``x = (i + 0.5) * in_size / out_size - 0.5`` (clamped at 0), mixing pixels
    ``floor(x)`` and ``floor(x) + 1`` (clamped at the edge) with weights ``1 - frac(x)`` and
    ``frac(x)``, exactly as PyTorch's ``interpolate(mode="bilinear", align_corners=False)``.
    The weights are rounded as PyTorch rounds them (a float32 scale, the source coordinate
    rounded once). Read-only; cached.
    """
    if in_size == out_size:
        first = np.arange(out_size)
        weight_second = np.zeros(out_size, np.float32)
    else:
        scale = float(np.float32(in_size) / np.float32(out_size))
        # float64 holds scale * (i + 0.5) - 0.5 exactly; one rounding to float32, as an FMA does.
        source = (scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
        source = np.maximum(source, np.float32(0))
        first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        weight_second = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
    second = np.minimum(first + 1, in_size - 1)
    weight_first = np.float32(1) - weight_second
    taps = (first.astype(np.intp), second.astype(np.intp), weight_first, weight_second)
    for array in taps:
        array.setflags(write=False)
    return taps


@functools.lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` float32 matrix of :func:`interpolation_taps`. Read-only; cached."""
    first, second, weight_first, weight_second = interpolation_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    matrix[rows, first] += weight_first
    matrix[rows, second] += weight_second  # at the edge second == first: weights sum to 1
    matrix.setflags(write=False)
    return matrix


def _as_float_images(images) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W), uint8 or float -> a new float32 (N, H, W) array."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {images.shape}")
    if images.dtype == np.uint8:
        result = images.astype(np.float32)
        result /= np.float32(255)  # divide, not multiply by 1/255: bit-identical to ToTensor
        return result
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 (0..255) or floating point (0..1), got {images.dtype}")
    return images.astype(np.float32)  # always a copy


def to_float(images) -> np.ndarray:
    """uint8 images ``(N, H, W)`` -> float32 ``(N, 1, H, W)`` in [0, 1] (``/ 255``, like ``ToTensor``).

    Float input is passed through as float32 without rescaling.
    """
    result = _as_float_images(images)
    return result.reshape(result.shape[0], 1, *result.shape[1:])


def resize_images(images, size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """Images ``(N, H, W)`` -> float32 ``(N, 1, size, size)`` in [0, 1], bilinear, half-pixel centres.

    uint8 input is first scaled by ``/ 255`` (:func:`to_float`); float input is used as is.
    The result equals PyTorch's ``interpolate(x, size, mode="bilinear", align_corners=False,
    antialias=False)`` on the float images to float32 rounding (at most about 1e-7): when
    upscaling, as the chapter does (28 -> 96), that is also torchvision's ``Resize``; when
    downscaling it is plain two-tap bilinear, without antialiasing. ``size`` may be
    ``(height, width)``.

    Bit-identical on every numpy version and x86-64 CPU: each output value is
    ``w0 * a + w1 * b`` in float32 as separate, correctly rounded multiplies and an add (width
    first, then height), never a matrix product, whose summation order and use of FMA depend
    on the BLAS kernel and the vector width.
    """
    pair = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(pair) != 2 or not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1 for value in pair):
        raise ValueError(f"size must be a positive integer or a pair of them, got {size!r}")
    out_height, out_width = (int(value) for value in pair)
    images = _as_float_images(images)
    count, height, width = images.shape
    if (height, width) == (out_height, out_width):
        return images.reshape(count, 1, height, width)
    result = np.empty((count, 1, out_height, out_width), np.float32)
    rows = np.empty((_RESIZE_CHUNK, height, out_width), np.float32)
    rows_second = np.empty_like(rows)
    second = np.empty((_RESIZE_CHUNK, out_height, out_width), np.float32)
    along_width = interpolation_taps(width, out_width)
    along_height = interpolation_taps(height, out_height)
    height_weights = [weight[:, None] for weight in along_height[2:]]
    # Chunks that stay in the cache: the gathers and products over a whole 96 x 96 batch would
    # stream every intermediate through memory.
    for start in range(0, count, _RESIZE_CHUNK):
        chunk = images[start:start + _RESIZE_CHUNK]
        n = len(chunk)
        _two_taps(chunk, along_width[:2], along_width[2:], 2, rows[:n], rows_second[:n])
        _two_taps(rows[:n], along_height[:2], height_weights, 1, result[start:start + n, 0], second[:n])
    return result


#: Images resized at a time: their intermediates fit in a core's L2 cache at 96 x 96.
_RESIZE_CHUNK = 16


def _two_taps(source, indices, weights, axis, out, scratch) -> None:
    """``out = weights[0] * source[.., indices[0], ..] + weights[1] * source[.., indices[1], ..]`` along ``axis``."""
    for index, weight, target in zip(indices, weights, (out, scratch)):
        if axis == source.ndim - 1:  # numpy 1.23's np.take is slow along the last axis; indexing is not
            np.multiply(source[..., index], weight, out=target)
        else:
            np.take(source, index, axis=axis, out=target, mode="clip")
            np.multiply(target, weight, out=target)
    np.add(out, scratch, out=out)


# --------------------------------------------------------------------------- subsets, synthetic data


def _check_seed(seed, name="seed"):
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")


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
    _check_seed(seed)
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


@functools.lru_cache(maxsize=1)
def _synthetic_templates() -> np.ndarray:
    """Ten fixed silhouettes (0/1 masks, 28 x 28), one per class, loosely after the real ones."""
    y, x = np.mgrid[0:28, 0:28]
    box = lambda top, bottom, left, right: (y >= top) & (y <= bottom) & (x >= left) & (x <= right)  # noqa: E731
    masks = [
        box(6, 22, 9, 18) | box(6, 10, 3, 24),                                # T-shirt: T shape
        box(4, 7, 8, 19) | box(4, 24, 8, 11) | box(4, 24, 16, 19),            # trouser: two legs
        box(5, 22, 4, 23) & ~box(12, 22, 8, 8) & ~box(12, 22, 19, 19),        # pullover: wide, seams
        (y >= 4) & (y <= 24) & (np.abs(x - 13.5) <= 1.5 + (y - 4) * 0.45),    # dress: widening
        box(3, 24, 5, 22) & ~box(3, 24, 13, 14),                              # coat: open front
        box(14, 22, 3, 24) & (y % 3 == 0),                                    # sandal: straps
        box(5, 23, 7, 20) & ~((y <= 11) & (np.abs(x - 13.5) < 12 - y)),       # shirt: V collar
        (y <= 22) & (y >= 22 - (x - 3) * 0.4) & box(12, 22, 3, 24),          # sneaker: wedge
        box(11, 24, 5, 22) | (box(4, 10, 9, 18) & ~box(6, 10, 11, 16)),       # bag: handle
        box(4, 22, 14, 21) | box(17, 22, 4, 21),                              # ankle boot: L
    ]
    return np.stack(masks).astype(np.int16)


@functools.lru_cache(maxsize=1)
def _shifted_templates() -> np.ndarray:
    """``[5 * (dy + 2) + (dx + 2), label]``: the templates shifted by (dy, dx), each in -2..2."""
    templates = _synthetic_templates()
    shifted = [np.roll(templates, (dy, dx), axis=(1, 2)) for dy in range(-2, 3) for dx in range(-2, 3)]
    return np.stack(shifted)  # no template comes within 2 pixels of the border: roll == shift


def synthetic_fashion_mnist(num_examples: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A learnable stand-in for Fashion-MNIST: uint8 images ``(N, 28, 28)``, int64 labels ``(N,)``.

    Each class is a fixed silhouette (:func:`_synthetic_templates`) at a random brightness,
    shifted by up to 2 pixels, plus uniform noise; classes are balanced (counts differ by at
    most one) in random order. Only integer arithmetic and ``Generator.integers`` /
    ``Generator.random`` draws, so the same seed gives the same bytes on NumPy 1.23 and 2.x.
    For tests and offline demos; a network learns it to near 100% quickly.
    """
    if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative integer, got {num_examples!r}")
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_examples) % _NUM_CLASSES)[np.argsort(rng.random(num_examples), kind="stable")]
    brightness = rng.integers(140, 256, size=num_examples).astype(np.int16)
    shifts = rng.integers(0, 25, size=num_examples)  # (dy, dx) in -2..2, as 5 * (dy + 2) + (dx + 2)
    noise = rng.integers(0, 81, size=(num_examples, _IMAGE_SIZE, _IMAGE_SIZE), dtype=np.uint8)
    silhouettes = _shifted_templates()
    images = np.empty((num_examples, _IMAGE_SIZE, _IMAGE_SIZE), np.uint8)
    for start in range(0, num_examples, 4096):  # in chunks that stay in cache
        part = slice(start, start + 4096)
        pixels = silhouettes[shifts[part], labels[part]] * brightness[part, None, None]
        pixels += noise[part]
        pixels -= 40
        np.clip(pixels, 0, 255, out=pixels)
        images[part] = pixels
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _synthetic_cached(num_examples: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_fashion_mnist(num_examples, seed)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# --------------------------------------------------------------------------- batching


class BatchLoader:
    """Batches of ``(images, labels)``: float32 NCHW NumPy and int64, the same in every backend.

    ``images`` are uint8 ``(N, 28, 28)`` (or float in [0, 1]); each batch is scaled to [0, 1]
    and, with ``resize``, resized with :func:`resize_images`, one batch at a time (so 60,000
    images at 96 x 96, 2.2 GB of float32, never exist at once). With ``shuffle`` each epoch
    visits the examples in the order ``np.random.default_rng([seed, epoch]).permutation(N)``,
    so the order depends only on seed and epoch. The last partial batch is kept unless
    ``drop_last``.

    Epochs: the first ``iter()`` uses epoch 0; every later ``iter()`` advances the epoch by
    one, like a shuffling DataLoader, so ``for epoch in ...: for X, y in loader:`` sees a new
    order each epoch. ``set_epoch(e)`` makes the next ``iter()`` use epoch ``e`` (for resuming).

    ``prefetch=k`` prepares up to ``k`` batches ahead in a background thread (NumPy releases
    the GIL, so this overlaps with the framework's work); the batches are identical to
    ``prefetch=0``, and the thread stops when the iteration ends, is abandoned (``break``, an
    exception, garbage collection) or is closed.

    ``shard=(rank, world_size)``: data-parallel worker ``rank``'s part of every batch, by
    :func:`shard_slices` (``batch_size`` must divide by ``world_size``; the examples of a last
    partial batch that do not divide evenly are skipped, and so is a last batch smaller than
    ``world_size``). The global order is the one above, whatever ``world_size``; only the
    shard's examples are decoded and resized.
    """

    def __init__(self, images, labels, batch_size: int, shuffle: bool = True, seed: int = 0,
                 resize: Optional[int] = None, drop_last: bool = False, prefetch: int = 0,
                 shard: Tuple[int, int] = (0, 1)):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] != 1):
            raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},) to match {len(images)} images, got {labels.shape}")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        _check_seed(seed)
        if resize is not None:
            resize_images(images[:0], resize)  # validates resize
        if not isinstance(prefetch, (int, np.integer)) or isinstance(prefetch, bool) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative integer (batches prepared ahead), got {prefetch!r}")
        rank, world_size = shard
        if not (isinstance(world_size, (int, np.integer)) and world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
        check_shardable(batch_size, world_size)
        self.shard = (int(rank), int(world_size))
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.resize, self.drop_last, self.prefetch = resize, bool(drop_last), int(prefetch)
        self._epoch, self._started, self._epoch_was_set = 0, False, False

    @property
    def num_examples(self) -> int:
        """Examples per epoch (those in a dropped last batch included)."""
        return len(self.labels)

    @property
    def epoch(self) -> int:
        """The epoch of the current (or, before the first, the next) iteration."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` use ``epoch``'s order (later ones continue from there)."""
        _check_seed(epoch, "epoch")
        self._epoch, self._epoch_was_set = int(epoch), True

    def __len__(self) -> int:
        full, partial = divmod(self.num_examples, self.batch_size)
        return full + (1 if partial >= self.shard[1] and not self.drop_last else 0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The example indices in the order ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def make_batch(self, indices) -> Tuple[np.ndarray, np.ndarray]:
        """The preprocessed batch of the examples at ``indices``."""
        images = self.images[indices]
        images = to_float(images) if self.resize is None else resize_images(images, self.resize)
        return images, self.labels[indices].astype(np.int64)

    def __iter__(self):
        if self._started and not self._epoch_was_set:
            self._epoch += 1
        self._started, self._epoch_was_set = True, False
        batches = self._batches(self.epoch_order(self._epoch))
        return _Prefetcher(batches, self.prefetch) if self.prefetch else batches

    def _batches(self, order: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        rank, world_size = self.shard
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            indices = order[start:start + self.batch_size]
            if world_size > 1:
                indices = indices[shard_slices(len(indices), world_size)[rank]]
            yield self.make_batch(indices)

    def __repr__(self) -> str:
        shard = f", shard={self.shard}" if self.shard[1] > 1 else ""
        return (f"BatchLoader({self.num_examples} examples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, resize={self.resize}, drop_last={self.drop_last}, prefetch={self.prefetch}{shard})")


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

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"ConvertedLoader({self.loader!r}, {getattr(self.convert, '__name__', self.convert)!r})"




#: Examples in the synthetic stand-ins for the two splits (the real sizes).
SYNTHETIC_SIZES = {"train": 60000, "test": 10000}
#: The data seeds of the synthetic splits (fixed: the training seed does not change the data).
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}


def fashion_mnist_loader(split: str, batch_size: int, resize: Optional[int] = None, seed: int = 0,
                         subset: Optional[int] = None, data_dir=None, drop_last: bool = False,
                         synthetic: bool = False, prefetch: int = 2, subset_seed: int = 0, verify: bool = True,
                         download: bool = True, shard: Tuple[int, int] = (0, 1)) -> BatchLoader:
    """The loader of one split ("train" shuffles with ``seed``; "test" keeps its order and every example).

    ``subset`` takes a class-stratified sample of that many examples, drawn with
    ``subset_seed``, not ``seed``, so runs with different seeds see the same examples.
    ``synthetic`` uses :func:`synthetic_fashion_mnist` (``subset`` or the split's usual size)
    instead of the real data and needs no files; otherwise ``data_dir``, ``verify`` and
    ``download`` go to :func:`load_fashion_mnist`. ``drop_last`` applies to "train" only, and so
    does ``shard`` (:class:`BatchLoader`; every data-parallel worker evaluates the whole test set).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    shuffle = split == "train"
    if synthetic:
        num_examples = SYNTHETIC_SIZES[split] if subset is None else subset
        if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool) or num_examples < 1:
            raise ValueError(f"{'subset' if split == 'train' else 'test_subset'} must be a positive integer, got {subset!r}")
        images, labels = _synthetic_cached(int(num_examples), _SYNTHETIC_SEEDS[split])
    else:
        images, labels = _load_split(split, data_dir, verify, download)
        if subset is not None:
            chosen = subset_indices(labels, subset, seed=subset_seed)
            images, labels = images[chosen], labels[chosen]
        labels = labels.astype(np.int64)
    return BatchLoader(images, labels, batch_size, shuffle=shuffle, seed=seed, resize=resize,
                       drop_last=drop_last and shuffle, prefetch=prefetch, shard=shard if shuffle else (0, 1))


def fashion_mnist_loaders(batch_size: int, resize: Optional[int] = None, seed: int = 0,
                          subset: Optional[int] = None, test_subset: Optional[int] = None,
                          data_dir=None, drop_last: bool = False, synthetic: bool = False,
                          prefetch: int = 2, subset_seed: int = 0, verify: bool = True,
                          download: bool = True, shard: Tuple[int, int] = (0, 1)) -> Tuple[BatchLoader, BatchLoader]:
    """``(train_loader, test_loader)``: the one data pipeline every backend and the training use.

    :func:`fashion_mnist_loader` for "train" (``subset``, ``shard``) and "test" (``test_subset``).
    """
    options = dict(batch_size=batch_size, resize=resize, seed=seed, data_dir=data_dir, drop_last=drop_last,
                   synthetic=synthetic, prefetch=prefetch, subset_seed=subset_seed, verify=verify,
                   download=download)
    return (fashion_mnist_loader("train", subset=subset, shard=shard, **options),
            fashion_mnist_loader("test", subset=test_subset, **options))



def chapter_loaders(to_tensor: Callable, batch_size: int, resize: Optional[int] = None, *, seed: int = 0,
                    data_dir=None, subset: Optional[int] = None, test_subset: Optional[int] = None,
                    synthetic: bool = False) -> Tuple[ConvertedLoader, ConvertedLoader]:
    """The chapter's ``load_data_fashion_mnist`` for a backend whose ``to_tensor(array)`` makes
    its framework's tensor (images in its ``DATA_FORMAT``, on the default device).

    ``(train_iter, test_iter)``: :func:`fashion_mnist_loaders`' batches (the same pixels in
    the same order in every backend for ``seed``), each converted as it is taken.
    ``subset`` / ``test_subset`` take class-stratified samples of the two splits.
    """
    train_loader, test_loader = fashion_mnist_loaders(batch_size, resize=resize, seed=seed, subset=subset,
                                                      test_subset=test_subset, data_dir=data_dir, synthetic=synthetic)

    def convert(images, labels):
        return to_tensor(images), to_tensor(labels)

    return ConvertedLoader(train_loader, convert), ConvertedLoader(test_loader, convert)