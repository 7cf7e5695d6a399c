"""The Fashion-MNIST pipeline in common: finding, checking, preprocessing, batching; and the
backend's loader against it.

No test reaches the network: an autouse fixture points the cache, the system directory and
the mirrors at temporary directories and refuses any URL that is not ``file://``.
"""
import dataclasses
import gzip
import hashlib
import importlib.util
import io
import json
import os
import struct
import threading
import urllib.error

import numpy as np
import pytest

from common import autotune
from common.data import (
    CLASS_NAMES,
    BatchLoader,
    ConvertedLoader,
    DataConfig,
    DataError,
    fashion_mnist_loader,
    fashion_mnist_loaders,
    files,  # the settings (mirrors, places, checksums) patched here live in it
    find_data_dir,
    interpolation_matrix,
    interpolation_taps,
    load_fashion_mnist,
    read_idx,
    resize_images,
    subset_indices,
    synthetic_fashion_mnist,
    to_float,
    transform_generators,
)
from common.data.transforms import Resize
from common.files import atomic_write, cache_dir

from helpers import REAL_DATA_DIR, assert_same_batches, epoch_batches, have_real_data, load_expected

HAVE_REAL_DATA = have_real_data()
#: SHA-256 of two epochs of :func:`toy_transform`'s batches (test_transformed_batches_are_pinned_on_every_numpy).
TOY_DIGEST = "15e5ef4aba3008ece86b475c631397ec10a90c8c45fe87714b98901d3cb582de"


# --------------------------------------------------------------------------- helpers


def idx_bytes(array, kind):
    """The IDX encoding of uint8 ``array``: kind "images" (N, H, W) or "labels" (N,)."""
    array = np.asarray(array, np.uint8)
    if kind == "images":
        return struct.pack(">IIII", 2051, *array.shape) + array.tobytes()
    return struct.pack(">II", 2049, len(array)) + array.tobytes()


def write_file(path, content, compress=None):
    compress = str(path).endswith(".gz") if compress is None else compress
    with open(path, "wb") as handle:
        handle.write(gzip.compress(content) if compress else content)
    return str(path)


def write_dataset(directory, num_train=40, num_test=20, gz=True, seed=0):
    """Four valid IDX files of synthetic data in ``directory``; returns {file name: content}."""
    os.makedirs(directory, exist_ok=True)
    contents = {}
    for split, count, data_seed in (("train", num_train, seed), ("test", num_test, seed + 1)):
        images, labels = synthetic_fashion_mnist(count, data_seed)
        images_name, labels_name = files.FILES[split]
        contents[images_name] = idx_bytes(images, "images")
        contents[labels_name] = idx_bytes(labels, "labels")
    for name, content in contents.items():
        write_file(os.path.join(directory, name + (".gz" if gz else "")), content)
    return contents


def trust(monkeypatch, contents):
    """Make ``contents`` the expected checksums, as if they were the real files."""
    checksums = {name: (hashlib.sha256(content).hexdigest(), len(content)) for name, content in contents.items()}
    monkeypatch.setattr(files, "CHECKSUMS", checksums)


def prefetch_threads():
    return [thread for thread in threading.enumerate() if thread.name == "BatchLoader-prefetch"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache, no system data, no environment variable, no network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(files, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    monkeypatch.setattr(files, "MIRRORS", [(tmp_path / "no-mirror").as_uri() + "/"])
    real_open = files._open_url

    def file_urls_only(url, *args, **kwargs):
        assert url.startswith("file:"), f"a test tried to reach the network: {url}"
        return real_open(url, *args, **kwargs)

    monkeypatch.setattr(files, "_open_url", file_urls_only)
    yield
    assert not prefetch_threads(), "a prefetch thread outlived its test"


# --------------------------------------------------------------------------- parsing and validation


@pytest.mark.parametrize("gz", [True, False])
def test_reads_valid_idx_files(tmp_path, monkeypatch, gz):
    contents = write_dataset(tmp_path / "d", gz=gz)
    trust(monkeypatch, contents)
    images, labels = load_fashion_mnist("train", data_dir=tmp_path / "d")
    expected_images, expected_labels = synthetic_fashion_mnist(40, 0)
    assert images.dtype == np.uint8 and images.shape == (40, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (40,)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    images[0, 0, 0] = 7  # the caller's copy, not the cached one
    assert load_fashion_mnist("train", data_dir=tmp_path / "d")[0][0, 0, 0] == expected_images[0, 0, 0]
    test_images, test_labels = load_fashion_mnist("test", data_dir=tmp_path / "d")
    assert test_images.shape == (20, 28, 28) and test_labels.shape == (20,)


def test_class_names():
    assert len(CLASS_NAMES) == 10
    assert CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[1] == "Trouser" and CLASS_NAMES[9] == "Ankle boot"


def test_checksum_catches_wrong_content(tmp_path):
    # Structurally valid files with other pixels (e.g. digit MNIST served under these names).
    write_dataset(tmp_path / "d")
    path = str(tmp_path / "d" / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: content does not match Fashion-MNIST's "
                                        r"train-images-idx3-ubyte .*expected 47,040,016 bytes.*verify=False"):
        read_idx(path)
    with pytest.raises(DataError, match="content does not match"):
        load_fashion_mnist("train", data_dir=tmp_path / "d")
    assert read_idx(path, verify=False).shape == (40, 28, 28)  # users' own IDX files


def test_same_size_wrong_content_is_caught(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "d", gz=False)
    trust(monkeypatch, contents)
    content = bytearray(contents["train-labels-idx1-ubyte"])
    content[-1] = (content[-1] + 1) % 10
    path = write_file(tmp_path / "train-labels-idx1-ubyte", bytes(content))
    with pytest.raises(DataError, match="content does not match"):
        read_idx(path)


def test_unknown_file_name_cannot_be_verified(tmp_path):
    path = write_file(tmp_path / "my-images.idx", idx_bytes(np.zeros((2, 28, 28)), "images"))
    with pytest.raises(DataError, match=r"my-images\.idx: is not one of the Fashion-MNIST files.*verify=False"):
        read_idx(path)
    assert read_idx(path, verify=False).shape == (2, 28, 28)


def gzip_of(content):
    return bytearray(gzip.compress(content))


def broken_files():
    images = idx_bytes(np.arange(3 * 784).reshape(3, 28, 28) % 256, "images")
    labels = idx_bytes([1, 2, 3], "labels")
    crc = gzip_of(images)
    crc[-6] ^= 0xFF
    header = gzip_of(images)
    header[0] = 0
    deflate = gzip_of(images)
    deflate[10:14] = b"\xff\xff\xff\xff"
    return {
        "truncated gzip": (bytes(gzip_of(images)[:200]), ".gz", r"is a truncated gzip file"),
        "bad crc": (bytes(crc), ".gz", r"is not a valid gzip file \(CRC check failed"),
        "bad gzip header": (bytes(header), ".gz", r"is not a valid gzip file \(Not a gzipped file"),
        "corrupt deflate data": (bytes(deflate), ".gz", r"has corrupt gzip data \(Error -3"),
        "wrong magic": (struct.pack(">IIII", 2052, 3, 28, 28) + images[16:], "",
                        r"has magic number 2052, expected 2051"),
        "short file": (images[:6], "", r"is too short for an IDX header \(6 bytes\)"),
        "short image header": (images[:12], "", r"is too short for an IDX image header"),
        "truncated images": (images[:-1], "",
                             r"is truncated: its header promises 3 images \(2,368 bytes\) but it holds 2,367"),
        "extra bytes": (labels + b"\0", "", r"has 1 bytes beyond the 3 items"),
        "not 28x28": (struct.pack(">IIII", 2051, 1, 32, 32) + bytes(1024), "", r"holds 32x32 images, expected 28x28"),
        "label out of range": (idx_bytes([0, 10, 3], "labels"), "", r"holds label 10, expected labels 0\.\.9"),
        "gzip without .gz": (gzip.compress(images), "", r"is gzip-compressed but its name does not end in \.gz"),
    }


@pytest.mark.parametrize("case", sorted(broken_files()))
def test_broken_files_raise_data_error_naming_the_file(tmp_path, case):
    content, suffix, message = broken_files()[case]
    path = write_file(tmp_path / ("train-images-idx3-ubyte" + suffix), content, compress=False)
    with pytest.raises(DataError, match=message) as caught:
        read_idx(path, verify=False)
    text = str(caught.value)
    assert text.startswith(path + ": ") and "\n" not in text
    assert "replace it" in text or "rename it" in text  # says how to fix it


def test_fix_depends_on_where_the_file_is(tmp_path):
    truncated = bytes(gzip_of(idx_bytes([1, 2], "labels"))[:15])
    os.makedirs(files.cache_dir())
    cached = write_file(os.path.join(files.cache_dir(), "train-labels-idx1-ubyte.gz"), truncated, compress=False)
    with pytest.raises(DataError, match="delete the file and run again to download it afresh"):
        read_idx(cached)
    os.makedirs(files.SYSTEM_DATA_DIR)
    system = write_file(os.path.join(files.SYSTEM_DATA_DIR, "train-labels-idx1-ubyte.gz"), truncated, compress=False)
    with pytest.raises(DataError, match=r"apt-get install --reinstall dataset-fashion-mnist"):
        read_idx(system)


def test_mismatched_counts_and_swapped_files(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "d", gz=False)
    contents["train-labels-idx1-ubyte"] = idx_bytes(synthetic_fashion_mnist(39)[1], "labels")
    write_file(tmp_path / "d" / "train-labels-idx1-ubyte", contents["train-labels-idx1-ubyte"])
    trust(monkeypatch, contents)
    with pytest.raises(DataError, match=r"holds 40 images but .*train-labels-idx1-ubyte holds 39 labels; "
                                        r"the two files do not belong together"):
        load_fashion_mnist("train", data_dir=tmp_path / "d")
    # Labels where the images should be.
    swapped = write_dataset(tmp_path / "e", gz=False)
    write_file(tmp_path / "e" / "t10k-images-idx3-ubyte", swapped["t10k-labels-idx1-ubyte"])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: holds labels, not images"):
        load_fashion_mnist("test", data_dir=tmp_path / "e", verify=False)


def test_bad_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_fashion_mnist("validation")


# --------------------------------------------------------------------------- finding the data


def forbid_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("download_fashion_mnist was called although the data was present")

    monkeypatch.setattr(files, "download_fashion_mnist", refuse)


def test_search_order(tmp_path, monkeypatch):
    forbid_download(monkeypatch)
    for place in ("explicit", "env", "cache", "system"):
        write_dataset(tmp_path / place)
    monkeypatch.setattr(files, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    os.makedirs(os.path.dirname(files.cache_dir()))
    os.rename(tmp_path / "cache", files.cache_dir())
    assert files.cache_dir() == str(tmp_path / "xdg" / "resnet-fmnist" / "fashion-mnist")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "env"))

    assert find_data_dir(tmp_path / "explicit") == str(tmp_path / "explicit")
    assert find_data_dir() == str(tmp_path / "env")
    monkeypatch.delenv("FASHION_MNIST_DIR")
    assert find_data_dir() == files.cache_dir()
    os.remove(os.path.join(files.cache_dir(), "t10k-labels-idx1-ubyte.gz"))  # an incomplete cache is skipped
    assert find_data_dir() == str(tmp_path / "system")


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert files.cache_dir() == os.path.join(str(tmp_path / "c"), "resnet-fmnist", "fashion-mnist")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for ignored in ("", "relative/path"):  # the XDG spec: fall back to ~/.cache
        monkeypatch.setenv("XDG_CACHE_HOME", ignored)
        assert files.cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "resnet-fmnist", "fashion-mnist")


def test_explicit_places_must_be_complete(tmp_path, monkeypatch):
    forbid_download(monkeypatch)
    write_dataset(tmp_path / "system")
    monkeypatch.setattr(files, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    write_dataset(tmp_path / "partial")
    os.remove(tmp_path / "partial" / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"data_dir .*partial lacks train-labels-idx1-ubyte \(with or without \.gz\)"):
        find_data_dir(tmp_path / "partial")
    with pytest.raises(DataError, match=r"data_dir .*nowhere is not a directory"):
        find_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "partial"))
    with pytest.raises(DataError, match=r"FASHION_MNIST_DIR= .*partial lacks train-labels-idx1-ubyte"):
        find_data_dir()


def test_offline_failure_lists_places_and_fixes(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(files, "_open_url", offline)
    monkeypatch.setattr(files, "MIRRORS", ["http://official.invalid/", "https://mirror.invalid/"])
    with pytest.raises(DataError) as caught:
        find_data_dir()
    message = str(caught.value)
    for expected in ("FASHION_MNIST_DIR (not set)", files.cache_dir(), files.SYSTEM_DATA_DIR,
                     "http://official.invalid/train-images-idx3-ubyte.gz: unreachable",
                     "https://mirror.invalid/train-images-idx3-ubyte.gz: unreachable",
                     "apt-get install dataset-fashion-mnist", "set FASHION_MNIST_DIR"):
        assert expected in message
    assert "\n" not in message
    with pytest.raises(DataError, match=r"downloading is off; looked in FASHION_MNIST_DIR \(not set\), "
                                        r".*apt-get install dataset-fashion-mnist"):
        find_data_dir(download=False)
    with pytest.raises(DataError, match="not found"):
        fashion_mnist_loaders(32, download=False)


# --------------------------------------------------------------------------- downloading


def serve(directory, contents, corrupt=()):
    """A fake mirror: ``<name>.gz`` files in ``directory`` (those in ``corrupt`` altered)."""
    os.makedirs(directory, exist_ok=True)
    for name, content in contents.items():
        if name in corrupt:
            content = content[:-1] + bytes([(content[-1] + 1) % 256])
        write_file(os.path.join(directory, name + ".gz"), content)
    return directory.as_uri() + "/"


def test_download_verifies_and_falls_back_to_the_mirror(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "made")
    trust(monkeypatch, contents)
    bad = serve(tmp_path / "bad", {k: v for k, v in contents.items() if "images" in k},
                corrupt=["train-images-idx3-ubyte"])
    good = serve(tmp_path / "good", contents)
    opened = []
    real_open = files._open_url
    monkeypatch.setattr(files, "_open_url", lambda url, **kwargs: opened.append(url) or real_open(url, **kwargs))
    monkeypatch.setattr(files, "MIRRORS", [bad, good])

    assert find_data_dir() == files.cache_dir()
    assert sorted(os.listdir(files.cache_dir())) == sorted(name + ".gz" for name in contents)
    assert opened == [
        bad + "train-images-idx3-ubyte.gz", good + "train-images-idx3-ubyte.gz",  # corrupt: next mirror
        bad + "train-labels-idx1-ubyte.gz", good + "train-labels-idx1-ubyte.gz",  # missing: next mirror
        bad + "t10k-images-idx3-ubyte.gz",
        bad + "t10k-labels-idx1-ubyte.gz", good + "t10k-labels-idx1-ubyte.gz",
    ]
    images, labels = load_fashion_mnist("train")
    np.testing.assert_array_equal(images, synthetic_fashion_mnist(40, 0)[0])
    # Present now: nothing more is downloaded.
    opened.clear()
    find_data_dir()
    assert opened == []


def test_download_fetches_only_missing_files(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "made")
    trust(monkeypatch, contents)
    os.makedirs(files.cache_dir())
    write_file(os.path.join(files.cache_dir(), "train-images-idx3-ubyte"), contents["train-images-idx3-ubyte"])
    opened = []
    real_open = files._open_url
    monkeypatch.setattr(files, "_open_url", lambda url, **kwargs: opened.append(url) or real_open(url, **kwargs))
    monkeypatch.setattr(files, "MIRRORS", [serve(tmp_path / "good", contents)])
    find_data_dir()
    assert [url.rsplit("/", 1)[1] for url in opened] == [
        "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_corrupt_download_leaves_nothing(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "made")
    trust(monkeypatch, contents)
    monkeypatch.setattr(files, "MIRRORS", [serve(tmp_path / "bad", contents, corrupt=list(contents))])
    with pytest.raises(DataError, match=r"downloading train-images-idx3-ubyte\.gz failed "
                                        r"\(file:.*train-images-idx3-ubyte\.gz: "
                                        r"the download from .*content does not match.*digit MNIST"):
        find_data_dir()
    assert os.listdir(files.cache_dir()) == []


class BrokenResponse(io.BytesIO):
    """A response whose connection drops after the first chunk."""

    headers = {"Content-Length": "999999"}

    def read(self, size=-1):
        if self.tell():
            raise ConnectionResetError("connection reset by peer")
        return super().read(100)


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "made")
    trust(monkeypatch, contents)
    monkeypatch.setattr(files, "MIRRORS", ["http://official.invalid/"])
    response = gzip.compress(contents["train-images-idx3-ubyte"])
    monkeypatch.setattr(files, "_open_url", lambda url, **kwargs: BrokenResponse(response))
    with pytest.raises(DataError, match="connection reset by peer"):
        find_data_dir()
    assert os.listdir(files.cache_dir()) == []


# --------------------------------------------------------------------------- preprocessing


def reference_resize(images, out_height, out_width):
    """Bilinear with half-pixel centres, one output pixel at a time, in float64."""
    count, height, width = images.shape
    result = np.zeros((count, out_height, out_width))

    def taps(index, in_size, out_size):
        source = max((index + 0.5) * in_size / out_size - 0.5, 0.0)
        first = min(int(np.floor(source)), in_size - 1)
        return first, min(first + 1, in_size - 1), source - first

    for i in range(out_height):
        top, bottom, dy = taps(i, height, out_height)
        for j in range(out_width):
            left, right, dx = taps(j, width, out_width)
            result[:, i, j] = ((1 - dy) * ((1 - dx) * images[:, top, left] + dx * images[:, top, right])
                               + dy * ((1 - dx) * images[:, bottom, left] + dx * images[:, bottom, right]))
    return result


@pytest.mark.parametrize("in_shape, size", [
    ((28, 28), 96), ((28, 28), 40), ((28, 28), 13), ((28, 28), 7), ((5, 7), (9, 4)), ((6, 6), 1), ((3, 4), (3, 11)),
])
def test_resize_matches_per_pixel_reference(rng, in_shape, size):
    images = rng.integers(0, 256, size=(3,) + in_shape, dtype=np.uint8)
    out_height, out_width = (size, size) if np.ndim(size) == 0 else size
    result = resize_images(images, size)
    assert result.dtype == np.float32 and result.shape == (3, 1, out_height, out_width)
    # The weights are rounded as PyTorch rounds them: a float32 source coordinate, up to
    # about 1e-6 off near x = 27, so up to 2e-6 here; a half-pixel error would be ~1e-2.
    np.testing.assert_allclose(result[:, 0], reference_resize(images / 255.0, out_height, out_width), rtol=0, atol=4e-6)


def test_resize_details(rng):
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    floats = to_float(images)
    assert floats.dtype == np.float32 and floats.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(floats[:, 0], images.astype(np.float32) / np.float32(255))
    assert floats.min() >= 0 and floats.max() <= 1
    np.testing.assert_array_equal(resize_images(images, 28), floats)  # same size: no interpolation
    np.testing.assert_array_equal(resize_images(images, 96), resize_images(floats, 96))  # uint8 = float path
    np.testing.assert_array_equal(resize_images(floats[:, 0].astype(np.float64), 96), resize_images(floats, 96))
    constant = np.full((1, 28, 28), 200, np.uint8)
    np.testing.assert_allclose(resize_images(constant, 96), 200 / 255, rtol=0, atol=1e-6)
    assert resize_images(images[:0], 96).shape == (0, 1, 96, 96)
    for size in (13, 28, 96):
        matrix = interpolation_matrix(28, size)
        assert matrix.shape == (size, 28) and not matrix.flags.writeable
        assert matrix.min() >= 0 and ((matrix != 0).sum(axis=1) <= 2).all()
        np.testing.assert_allclose(matrix.sum(axis=1), 1, rtol=0, atol=1e-7)


@pytest.mark.parametrize("size", [96, 40, 13, (5, 9)])
def test_resize_is_two_rounded_taps_per_axis(rng, size):
    # Bit for bit: w0 * a + w1 * b in float32, width then height, whatever the batch size
    # (37 crosses the chunk boundaries) -- no product whose rounding depends on BLAS or SIMD.
    images = rng.integers(0, 256, size=(37, 28, 28), dtype=np.uint8)
    out_height, out_width = (size, size) if np.ndim(size) == 0 else size
    floats = images.astype(np.float32) / np.float32(255)
    first, second, weight_first, weight_second = interpolation_taps(28, out_width)
    rows = floats[:, :, first] * weight_first + floats[:, :, second] * weight_second
    first, second, weight_first, weight_second = interpolation_taps(28, out_height)
    expected = rows[:, first, :] * weight_first[:, None] + rows[:, second, :] * weight_second[:, None]
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(resize_images(images, size)[:, 0], expected)


def test_resize_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W\) or \(N, 1, H, W\), got \(28, 28\)"):
        resize_images(np.zeros((28, 28), np.uint8), 96)
    with pytest.raises(ValueError, match="images must be uint8"):
        to_float(np.zeros((1, 28, 28), np.int32))
    for size in (0, -3, 9.5, True, (96,), (0, 3)):
        with pytest.raises(ValueError, match="size must be a positive integer"):
            resize_images(np.zeros((1, 28, 28), np.uint8), size)


@pytest.mark.parametrize("size", [96, 40, 13, (56, 20)])
def test_resize_matches_torch_interpolate(rng, size):
    torch = pytest.importorskip("torch")
    images = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    floats = to_float(images)
    out_size = (size, size) if np.ndim(size) == 0 else size
    expected = torch.nn.functional.interpolate(torch.from_numpy(floats), size=out_size, mode="bilinear",
                                               align_corners=False, antialias=False).numpy()
    # Float32 rounding only (FMA and summation order); a half-pixel error would be ~1e-2.
    np.testing.assert_allclose(resize_images(images, size), expected, rtol=0, atol=1e-6)
    eye = torch.eye(28)[None, None]
    weights = torch.nn.functional.interpolate(eye, size=(out_size[0], 28), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(interpolation_matrix(28, out_size[0]), weights[0, 0].numpy(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- subsets and synthetic data


def test_subset_indices():
    labels = np.arange(100) % 10
    np.testing.assert_array_equal(subset_indices(labels, 7), np.arange(7))
    chosen = subset_indices(labels, 10, seed=0)
    assert chosen.tolist() == [14, 21, 27, 40, 43, 45, 52, 66, 68, 69]  # the same on every NumPy
    assert sorted(labels[chosen].tolist()) == list(range(10))
    np.testing.assert_array_equal(subset_indices(labels, 10, seed=0), chosen)
    assert not np.array_equal(subset_indices(labels, 10, seed=1), chosen)
    large = subset_indices(labels, 50, seed=3)
    assert np.all(np.diff(large) > 0) and np.bincount(labels[large]).tolist() == [5] * 10
    # Unequal classes: shares 2.92, 0.83, 1.25 of 5 -> 3, 1, 1 (largest remainders).
    uneven = np.r_[np.zeros(7, int), np.ones(2, int), np.full(3, 2)]
    assert subset_indices(uneven, 5, seed=1).tolist() == [0, 1, 5, 8, 11]
    for bad in (0, 101, -1, 2.5):
        with pytest.raises(ValueError, match="must be an integer from 1 to 100"):
            subset_indices(labels, bad, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        subset_indices(labels, 5, seed=-1)


def test_synthetic_data_is_deterministic_balanced_and_learnable():
    images, labels = synthetic_fashion_mnist(200, seed=0)
    assert images.dtype == np.uint8 and images.shape == (200, 28, 28)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [20] * 10
    # The same bytes on NumPy 1.23 (mx environment) and 2.x (the others).
    digest = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()
    assert digest == "768334b107c6ef6107b6d3d524a6885ffa82324505c2d5d42415f95216093667"
    other_images, _ = synthetic_fashion_mnist(200, seed=1)
    assert not np.array_equal(other_images, images)
    assert synthetic_fashion_mnist(0)[0].shape == (0, 28, 28)
    # Learnable: class means of one sample classify a fresh sample.
    train_images, train_labels = synthetic_fashion_mnist(1000, seed=2)
    means = np.stack([train_images[train_labels == k].reshape(-1, 784).mean(0) for k in range(10)])
    distances = ((images.reshape(-1, 1, 784).astype(float) - means[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == labels).mean() > 0.9


# --------------------------------------------------------------------------- batching


def index_loader(count=10, batch_size=4, **kwargs):
    """A loader whose label is the example's index, so batches show the order."""
    images = (np.arange(count)[:, None, None] * np.ones((1, 28, 28))).astype(np.uint8)
    return BatchLoader(images, np.arange(count), batch_size, **kwargs)


def epoch_labels(loader):
    return np.concatenate([labels for _, labels in loader]).tolist()


def test_batches_sizes_and_drop_last():
    loader = index_loader(10, 4, shuffle=False)
    batches = list(loader)
    assert len(loader) == 3 and loader.num_examples == 10
    assert [len(labels) for _, labels in batches] == [4, 4, 2]  # the last partial batch is kept
    images, labels = batches[0]
    assert images.dtype == np.float32 and images.shape == (4, 1, 28, 28) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(4, dtype=np.float32) / np.float32(255))
    dropped = index_loader(10, 4, shuffle=False, drop_last=True)
    assert len(dropped) == 2 and [len(labels) for _, labels in dropped] == [4, 4]
    assert len(index_loader(8, 4, drop_last=True)) == 2 and len(index_loader(8, 4)) == 2


def test_shuffle_order_and_epochs():
    loader = index_loader(10, 4, seed=3)
    assert loader.epoch == 0
    first = epoch_labels(loader)
    assert loader.epoch == 0
    assert first == np.random.default_rng([3, 0]).permutation(10).tolist()
    second = epoch_labels(loader)  # a plain iter() moves to the next epoch
    assert loader.epoch == 1 and second == np.random.default_rng([3, 1]).permutation(10).tolist()
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    loader.set_epoch(0)
    assert loader.epoch == 0 and epoch_labels(loader) == first
    loader.set_epoch(5)
    epoch_labels(loader)
    assert loader.epoch == 5
    epoch_labels(loader)
    assert loader.epoch == 6
    # Only seed and epoch decide the order: a fresh loader resuming at epoch 1 agrees.
    resumed = index_loader(10, 4, seed=3)
    resumed.set_epoch(1)
    assert epoch_labels(resumed) == second
    assert epoch_labels(index_loader(10, 4, seed=4)) != first
    unshuffled = index_loader(10, 4, shuffle=False)
    assert epoch_labels(unshuffled) == epoch_labels(unshuffled) == list(range(10))
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        loader.set_epoch(-1)


def test_shuffle_order_is_the_same_on_every_numpy():
    loader = BatchLoader(np.zeros((60000, 28, 28), np.uint8), np.zeros(60000, np.int64), 256)
    assert loader.epoch_order(0)[:8].tolist() == [4013, 23840, 29603, 43011, 58703, 2290, 55984, 52800]


def test_batches_are_resized_lazily(rng):
    images = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    loader = BatchLoader(images, np.arange(10), 4, seed=1, resize=40)
    order = loader.epoch_order(0)
    for number, (batch, labels) in enumerate(loader):
        indices = order[number * 4:(number + 1) * 4]
        np.testing.assert_array_equal(labels, indices)
        np.testing.assert_array_equal(batch, resize_images(images[indices], 40))


def test_loader_rejects_bad_arguments():
    images, labels = np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        BatchLoader(images, labels, 0)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        BatchLoader(images, labels[:3], 2)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        BatchLoader(images, labels, 2, resize=0)
    with pytest.raises(ValueError, match="prefetch must be a non-negative integer"):
        BatchLoader(images, labels, 2, prefetch=-1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        BatchLoader(images, labels, 2, seed=-2)


def test_prefetch_gives_the_same_batches(rng):
    images = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    plain = BatchLoader(images, np.arange(50), 8, seed=2, resize=32)
    ahead = BatchLoader(images, np.arange(50), 8, seed=2, resize=32, prefetch=3)
    for _ in range(2):
        expected, got = list(plain), list(ahead)
        assert len(expected) == len(got) == 7
        for (expected_images, expected_labels), (images_batch, labels) in zip(expected, got):
            np.testing.assert_array_equal(images_batch, expected_images)
            np.testing.assert_array_equal(labels, expected_labels)
    assert ahead.epoch == 1


def test_prefetch_thread_stops_when_the_consumer_stops_early():
    loader = index_loader(100, 2, prefetch=2)
    for _ in loader:
        break
    assert not prefetch_threads()
    with pytest.raises(KeyError):
        for _ in loader:
            raise KeyError("consumer failed")
    assert not prefetch_threads()
    batches = iter(loader)
    next(batches)
    del batches  # abandoned half-way: garbage collection stops the thread
    assert not prefetch_threads()
    batches = iter(loader)
    batches.close()
    assert not prefetch_threads() and list(batches) == []


def test_prefetch_passes_errors_to_the_consumer(monkeypatch):
    loader = index_loader(10, 2, prefetch=2)
    calls = []

    def failing(indices):
        calls.append(indices)
        if len(calls) == 2:
            raise MemoryError("no room")
        return BatchLoader.make_batch(loader, indices)

    monkeypatch.setattr(loader, "make_batch", failing)
    batches = iter(loader)
    next(batches)
    with pytest.raises(MemoryError, match="no room"):
        next(batches)
    assert not prefetch_threads()


def test_converted_loader_forwards_everything():
    loader = index_loader(10, 4, seed=1, prefetch=1)
    converted = ConvertedLoader(loader, lambda images, labels: ("converted", images.shape, labels.tolist()))
    assert isinstance(converted, ConvertedLoader) and converted.loader is loader
    assert len(converted) == 3 and converted.num_examples == 10 and converted.batch_size == 4
    batches = list(converted)
    assert [batch[0] for batch in batches] == ["converted"] * 3
    assert sum((batch[2] for batch in batches), []) == np.random.default_rng([1, 0]).permutation(10).tolist()
    iterator = iter(converted)  # the epoch advances at iter(), as with the loader itself
    assert converted.epoch == 1
    next(iterator)
    del iterator
    assert not prefetch_threads()
    converted.set_epoch(0)
    assert converted.epoch == 0 and [batch[2] for batch in converted] == [batch[2] for batch in batches]
    for _ in converted:
        break
    assert not prefetch_threads()


def test_fashion_mnist_loaders_synthetic():
    train, test = fashion_mnist_loaders(64, resize=32, seed=5, subset=300, test_subset=100, synthetic=True,
                                        drop_last=True)
    assert train.num_examples == 300 and test.num_examples == 100
    assert train.shuffle and not test.shuffle
    assert len(train) == 4 and len(test) == 2  # drop_last is for training only
    images, labels = next(iter(train))
    assert images.shape == (64, 1, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int64
    expected_images, expected_labels = synthetic_fashion_mnist(300, 0)
    order = np.random.default_rng([5, 0]).permutation(300)[:64]
    np.testing.assert_array_equal(labels, expected_labels[order])
    np.testing.assert_array_equal(images, resize_images(expected_images[order], 32))
    again, _ = fashion_mnist_loaders(64, resize=32, seed=5, subset=300, test_subset=100, synthetic=True, prefetch=0)
    np.testing.assert_array_equal(next(iter(again))[0], images)
    default_train, default_test = fashion_mnist_loaders(256, synthetic=True, test_subset=50)
    assert default_train.num_examples == 60000 and default_test.num_examples == 50
    with pytest.raises(ValueError, match="subset must be a positive integer"):
        fashion_mnist_loaders(64, synthetic=True, subset=0)


def test_fashion_mnist_loaders_from_files(tmp_path, monkeypatch):
    contents = write_dataset(tmp_path / "d", num_train=200, num_test=50)
    trust(monkeypatch, contents)
    train, test = fashion_mnist_loaders(32, data_dir=tmp_path / "d", subset=50, test_subset=20, seed=1)
    assert train.num_examples == 50 and test.num_examples == 20
    assert np.bincount(train.labels).tolist() == [5] * 10
    all_images, all_labels = load_fashion_mnist("train", data_dir=tmp_path / "d")
    chosen = subset_indices(all_labels, 50, seed=0)  # subset_seed, not the training seed
    np.testing.assert_array_equal(train.labels, all_labels[chosen])
    np.testing.assert_array_equal(train.images, all_images[chosen])
    whole, _ = fashion_mnist_loaders(32, data_dir=tmp_path / "d")
    assert whole.num_examples == 200


# --------------------------------------------------------------------------- the configuration


def test_data_config_is_one_frozen_checked_value(tmp_path):
    config = DataConfig(32, resize=40, subset=64, data_dir=tmp_path, shard=[1, 2], transforms=[toy_transform])
    assert (config.seed, config.subset_seed, config.test_subset, config.prefetch) == (0, 0, None, 2)
    assert config.data_dir == str(tmp_path) and config.shard == (1, 2) and config.transforms == (toy_transform,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    assert config.replace(seed=3).seed == 3 and config.seed == 0
    assert DataConfig(32, data_dir=str(tmp_path), subset=64, resize=40, shard=(1, 2),
                      transforms=(toy_transform,)) == config
    for changes, message in [
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(resize=0), "size must be a positive integer"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(subset_seed=1.5), "subset_seed must be a non-negative integer"),
        (dict(subset=0), "subset must be a positive integer, got 0"),
        (dict(test_subset=True), "test_subset must be a positive integer"),
        (dict(prefetch=-1), "prefetch must be a non-negative integer"),
        (dict(shard=(2, 2)), r"shard must be \(rank, world_size\)"),
        (dict(batch_size=10, shard=(0, 4)), "^--batch-size 10 does not split evenly over 4 workers"),
        (dict(synthetic="yes"), "synthetic must be True or False"),
        (dict(transforms=toy_transform), "transforms must be a sequence of transform"),
        (dict(transforms=(toy_transform, 3)), "transforms must be a sequence of transform"),
    ]:
        with pytest.raises(ValueError, match=message):
            DataConfig(**dict(dict(batch_size=32), **changes))


def test_a_batch_size_with_keywords_stands_for_a_config():
    config = DataConfig(32, seed=4, subset=64, test_subset=20, synthetic=True, prefetch=0)
    by_config = [(repr(loader), epoch_labels(loader)) for loader in fashion_mnist_loaders(config)]
    by_keywords = fashion_mnist_loaders(32, seed=4, subset=64, test_subset=20, synthetic=True, prefetch=0)
    changed = fashion_mnist_loaders(config.replace(seed=9), seed=4)  # keywords replace a config's fields
    for loaders in (by_keywords, changed):
        assert [(repr(loader), epoch_labels(loader)) for loader in loaders] == by_config
    test = fashion_mnist_loader("test", config)  # one config for both splits: the test split takes test_subset
    assert test.num_examples == 20 and not test.shuffle


# --------------------------------------------------------------------------- the transform hook


def toy_transform(batch, rng):
    """Flips some examples left-right and scales each by a gain of 1/4 .. 4/4: per-example values
    drawn for the whole global batch, of which this batch (or shard) takes its rows."""
    flips = batch.take(rng.random(batch.global_size) < 0.5)
    gains = batch.take(rng.integers(1, 5, size=batch.global_size)).astype(np.float32) / np.float32(4)
    images = np.where(flips[:, None, None, None], batch.images[..., ::-1], batch.images)
    return batch.replace(images=images * gains[:, None, None, None])


def transformed_loader(count=21, batch_size=8, **kwargs):
    images, _ = synthetic_fashion_mnist(count, seed=5)
    return BatchLoader(images, np.arange(count), batch_size, seed=3, transforms=(toy_transform,), **kwargs)


def test_each_transform_gets_its_batch_and_its_own_generator():
    seen = []

    def recorder(number):
        def record(batch, rng):
            seen.append((number, batch.labels.tolist(), batch.part, batch.global_size, int(rng.integers(2 ** 62))))
            return batch
        return record

    loader, plain = index_loader(10, 4, seed=2, transforms=(recorder(0), recorder(1))), index_loader(10, 4, seed=2)
    loader.set_epoch(1)
    plain.set_epoch(1)
    assert_same_batches(epoch_batches(loader), epoch_batches(plain))  # these transforms change nothing
    order = loader.epoch_order(1).tolist()
    expected = []
    for index, size in enumerate((4, 4, 2)):
        generators = transform_generators(2, 1, index, 2)
        for number in range(2):
            expected.append((number, order[4 * index:4 * index + size], slice(0, size), size,
                             int(generators[number].integers(2 ** 62))))
    assert seen == expected
    # Independent of the shuffle's stream, default_rng([seed, epoch]) (a SeedSequence pads short entropy with zeros).
    assert transform_generators(2, 1, 0, 1)[0].random() != np.random.default_rng([2, 1]).random()


def test_transformed_batches_are_pinned_on_every_numpy():
    # The same bytes on numpy 1.23 (mx environment) and 2.x (the others): the generators' streams and
    # float32 arithmetic element by element.
    loader = transformed_loader(40, 16)
    digest = hashlib.sha256()
    for _ in range(2):
        for images, labels in loader:
            digest.update(images.tobytes() + labels.astype("<i8").tobytes())
    assert digest.hexdigest() == TOY_DIGEST
    untransformed = epoch_batches(BatchLoader(loader.images, loader.labels, 16, seed=3))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch_batches(transformed_loader(40, 16)), untransformed))


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_shard_is_its_slice_of_the_transformed_global_batch(workers):
    whole = transformed_loader(21, 8)
    shards = [transformed_loader(21, 8, shard=(rank, workers)) for rank in range(workers)]
    for _ in range(2):  # two epochs
        expected = epoch_batches(whole)
        got = [epoch_batches(shard) for shard in shards]
        for step, (images, labels) in enumerate(expected):
            if len(labels) < workers:  # a last batch smaller than the number of workers is skipped
                assert all(len(batches) == step for batches in got)
                continue
            used = workers * (len(labels) // workers)
            np.testing.assert_array_equal(np.concatenate([batches[step][1] for batches in got]), labels[:used])
            np.testing.assert_array_equal(np.concatenate([batches[step][0] for batches in got]), images[:used])


def test_a_transform_that_draws_for_its_shard_only_is_refused():
    def per_shard(batch, rng):
        return batch.replace(images=batch.images * batch.take(rng.random(len(batch.labels)))[:, None, None, None])

    images, _ = synthetic_fashion_mnist(8)
    batches = iter(BatchLoader(images, np.arange(8), 8, transforms=(per_shard,), shard=(0, 2)))
    with pytest.raises(ValueError, match=r"draw per-example values for the whole global batch \(8 examples\)"):
        next(batches)
    with pytest.raises(TypeError, match="must return a Batch of 8 examples"):
        next(iter(BatchLoader(images, np.arange(8), 8, transforms=(lambda batch, rng: batch.images,))))


def test_transformed_batches_survive_resuming_and_prefetching():
    continuous = transformed_loader(21, 8)
    epochs = [epoch_batches(continuous) for _ in range(3)]
    resumed = transformed_loader(21, 8, prefetch=2)
    resumed.set_epoch(1)
    assert_same_batches(epoch_batches(resumed), epochs[1])
    mid_epoch = transformed_loader(21, 8)
    mid_epoch.set_epoch(1, first_batch=2)  # a run resumed after batch 2 of epoch 1
    assert mid_epoch.epoch == 1 and len(mid_epoch) == 3
    assert_same_batches(epoch_batches(mid_epoch), epochs[1][2:])
    assert_same_batches(epoch_batches(mid_epoch), epochs[2])  # and the next epoch from its start
    converted = ConvertedLoader(transformed_loader(21, 8, prefetch=1), lambda images, labels: (images, labels))
    converted.set_epoch(2, 1)
    assert_same_batches(epoch_batches(converted), epochs[2][1:])
    with pytest.raises(ValueError, match=r"first_batch must be an integer from 0 to 3"):
        mid_epoch.set_epoch(0, 4)


def test_the_test_split_is_never_transformed():
    config = DataConfig(32, subset=64, test_subset=40, synthetic=True, prefetch=0, transforms=(toy_transform,))
    train, test = fashion_mnist_loaders(config)
    plain_train, plain_test = fashion_mnist_loaders(config.replace(transforms=()))
    assert train.transforms == (toy_transform,) and test.transforms == ()
    assert_same_batches(epoch_batches(test), epoch_batches(plain_test))
    assert not np.array_equal(next(iter(train))[0], next(iter(plain_train))[0])


def test_preprocessing_is_chosen_once():
    images, labels = np.zeros((4, 28, 28), np.uint8), np.arange(4)
    assert BatchLoader(images, labels, 2).preprocess is to_float
    assert BatchLoader(images, labels, 2, resize=40).preprocess == Resize(40)
    np.testing.assert_array_equal(Resize((9, 5))(images), resize_images(images, (9, 5)))


# --------------------------------------------------------------------------- common.files


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda handle: handle.write(b"first"))
    assert path.read_bytes() == b"first"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as an ordinary open() would make it

    def fails_half_way(handle):
        handle.write(b"half")
        raise KeyError("refused")

    with pytest.raises(KeyError, match="refused"):
        atomic_write(path, fails_half_way)
    assert path.read_bytes() == b"first" and os.listdir(path.parent) == ["file.bin"]


def test_every_cache_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home_cache = os.path.join(str(tmp_path / "home"), ".cache", "resnet-fmnist")
    for value, base in [(str(tmp_path / "c"), os.path.join(str(tmp_path / "c"), "resnet-fmnist")),
                        ("", home_cache), ("relative/path", home_cache), (None, home_cache)]:
        if value is None:
            monkeypatch.delenv("XDG_CACHE_HOME")
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", value)  # the XDG spec: ignore an empty or relative value
        assert cache_dir() == base and cache_dir("a", "b") == os.path.join(base, "a", "b")
        assert files.cache_dir() == os.path.join(base, "fashion-mnist")
        assert autotune.cache_path() == os.path.join(base, "autotune.json")
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "mine.json"))
    assert autotune.cache_path() == str(tmp_path / "mine.json")


# --------------------------------------------------------------------------- the real data


@pytest.mark.real_data
def test_real_fashion_mnist(real_data):
    # the real_data fixture skips without the data, or fails under RESNET_REQUIRE_REAL_DATA=1 (CI)
    counts = {"train": 60000, "test": 10000}
    for split, (images_name, labels_name) in files.FILES.items():
        images, labels = load_fashion_mnist(split, data_dir=real_data)
        assert images.shape == (counts[split], 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [counts[split] // 10] * 10
        for name in (images_name, labels_name):  # checked here without common's reader
            path = os.path.join(real_data, name)
            with (gzip.open(path + ".gz") if os.path.exists(path + ".gz") else open(path, "rb")) as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == files.CHECKSUMS[name][0]
    train, test = fashion_mnist_loaders(256, resize=96, data_dir=real_data)
    assert (train.num_examples, len(train), test.num_examples, len(test)) == (60000, 235, 10000, 40)
    images, labels = next(iter(train))
    assert images.shape == (256, 1, 96, 96) and 0 <= images.min() and images.max() <= 1


@pytest.mark.real_data
def test_first_batches_are_bit_identical_on_every_numpy_and_cpu(real_data):
    # tests/expected/batch_digests.json, from tools/make_batch_digests.py: the same digests in
    # every environment (numpy 1.23 for mx, 2.x for torch and tf) and on AVX2 and AVX-512.
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "make_batch_digests.py")
    spec = importlib.util.spec_from_file_location("make_batch_digests", tool)
    make_batch_digests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_batch_digests)
    expected = load_expected("batch_digests.json")["digests"]
    assert make_batch_digests.batch_digests(real_data) == expected


# --------------------------------------------------------------------------- the backend's loader


def test_backend_batches_are_common_batches(backend):
    """The backend's first batches, converted back to NCHW NumPy, are common's, bit for bit."""
    if HAVE_REAL_DATA:
        source = dict(data_dir=REAL_DATA_DIR, subset=300)
    else:
        source = dict(synthetic=True, subset=300)
    train, test = backend.load_data_fashion_mnist(32, resize=40, seed=7, **source)
    common_train, common_test = fashion_mnist_loaders(32, resize=40, seed=7, test_subset=None, prefetch=0, **source)
    assert len(train) == len(common_train) and len(test) == len(common_test)
    for _ in range(2):  # two epochs: the backend's loader advances the order like common's
        for loader, reference in ((train, common_train), (test, common_test)):
            images, labels = next(iter(loader))
            expected_images, expected_labels = next(iter(reference))
            images = backend.to_numpy(images)
            assert images.shape == expected_images.shape == (32, 1, 40, 40)
            np.testing.assert_array_equal(images, expected_images)
            np.testing.assert_array_equal(np.asarray(backend.to_numpy(labels)).astype(np.int64), expected_labels)


def test_transform_options_are_checked_and_ordered(monkeypatch):
    from common.data import TRANSFORM_OPTIONS, TransformOption, build_transforms, check_requested
    from common.hparams import TrainConfig

    monkeypatch.setitem(TRANSFORM_OPTIONS, "flip_a", TransformOption("flip_a", bool, "", lambda on: ("a", on)))

    def make_b(value):
        if value < 0:
            raise ValueError(f"shift_b must be >= 0, got {value}")
        return ("b", value)

    monkeypatch.setitem(TRANSFORM_OPTIONS, "shift_b", TransformOption("shift_b", float, "", make_b))
    # registry order, whatever the order asked in; an int where a float is wanted is that float
    assert check_requested([("shift_b", 2), ("flip_a", True)]) == (("flip_a", True), ("shift_b", 2.0))
    assert build_transforms({"shift_b": 1.5}) == (("b", 1.5),)
    for bad, message in [([("nope", 1)], "unknown transform 'nope'; the transforms a run can ask for: .*flip_a"),
                         ([("flip_a", True), ("flip_a", True)], "each transform at most once"),
                         ([("flip_a", 1)], "transform flip_a takes a bool, got 1"),
                         ([("shift_b", -1.0)], "shift_b must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            check_requested(bad)
        with pytest.raises(ValueError, match=message):
            TrainConfig(transforms=bad).validate()
    # metrics.json holds the pairs as lists: read back, the config is the same
    config = TrainConfig(transforms=(("flip_a", True),))
    assert TrainConfig(**json.loads(json.dumps(config.to_dict()))) == config
