"""Fashion-MNIST's files: where they are looked for, how they are downloaded, how their content is verified.

Any problem raises :class:`DataError`: one line naming the file, what is wrong and how to fix it.
The settings here (:data:`MIRRORS`, :data:`SYSTEM_DATA_DIR`, :data:`CHECKSUMS`) are read at
call time, so a test patches them in this module.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import zlib
from typing import List, Optional, Sequence

from .. import files as project_files

__all__ = ["CLASS_NAMES", "FILES", "CHECKSUMS", "MIRRORS", "SYSTEM_DATA_DIR", "ENV_VAR", "DataError", "cache_dir",
           "find_data_dir", "download_fashion_mnist", "file_in", "read_content", "verify_content", "fix_for"]

#: Label -> name, as in the data set's documentation.
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

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
    """The download directory: ``fashion-mnist`` in :func:`common.files.cache_dir`."""
    return project_files.cache_dir("fashion-mnist")


def file_in(directory: str, name: str) -> Optional[str]:
    """The path of ``name`` or ``name.gz`` in ``directory`` (uncompressed first), or None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _missing_files(directory: str) -> List[str]:
    return [name for names in FILES.values() for name in names if file_in(directory, name) is None]


def _require_complete(directory: str, origin: str) -> str:
    if not os.path.isdir(directory):
        raise DataError(f"{origin} {directory} is not a directory; point it at the directory that holds the four "
                        f"Fashion-MNIST IDX files")
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


# --------------------------------------------------------------------------- downloading


def download_fashion_mnist(directory: str, mirrors: Optional[Sequence[str]] = None) -> str:
    """Download the files missing from ``directory``, each verified before it appears there.

    Each file streams into a temporary file beside its destination (with a progress bar when
    tqdm is installed and stderr is a terminal), is decompressed and checked against
    :data:`CHECKSUMS`, and only then renamed into place (:func:`common.files.atomic_write`); an
    interrupted, corrupt or wrong download leaves nothing behind. Mirrors are tried in order
    (default :data:`MIRRORS`).
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
    what = f"the download from {url}"

    def write(out) -> None:  # raising here leaves nothing at ``destination``
        chunks = []
        with _open_url(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            with _ProgressBar(name + ".gz", int(total) if total and total.isdigit() else None) as progress:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    chunks.append(chunk)
                    progress(len(chunk))
        content = _decompressed(b"".join(chunks), what, "the server sent something else")
        _check_checksum(content, name, what,
                        "the server sent another file (a proxy serving digit MNIST under these names?)")

    project_files.atomic_write(destination, write)


class _ProgressBar:
    """tqdm's bar (bytes), or nothing where tqdm is missing or stderr is not a terminal."""

    def __init__(self, description: str, total: Optional[int]):
        self._bar = None
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True, disable=None, file=sys.stderr,
                         leave=False)

    def __enter__(self):
        return self._bar.update if self._bar is not None else (lambda n: None)

    def __exit__(self, *exc_info):
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- reading and verifying


def fix_for(path: str) -> str:
    """How to replace a bad file, depending on where it came from."""
    where = os.path.dirname(os.path.abspath(path))
    if where == os.path.abspath(cache_dir()):
        return "delete the file and run again to download it afresh"
    if where == os.path.abspath(SYSTEM_DATA_DIR):
        return "reinstall the Debian package (apt-get install --reinstall dataset-fashion-mnist)"
    return "replace it with the official file (or delete it and run again to download it)"


def read_content(path: str) -> bytes:
    """The file's bytes, gunzipped if its name ends in ``.gz``; any failure is a DataError
    naming the file and how to replace a file in that place."""
    fix = fix_for(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}); check its permissions or {fix}") from None
    if not path.endswith(".gz"):
        if raw[:2] == b"\x1f\x8b":
            raise DataError(f"{path}: is gzip-compressed but its name does not end in .gz; rename it to "
                            f"{os.path.basename(path)}.gz")
        return raw
    return _decompressed(raw, path, fix)


def _decompressed(raw: bytes, label: str, fix: str) -> bytes:
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


def verify_content(content: bytes, path: str) -> None:
    """A DataError unless ``content``, read from ``path``, is the Fashion-MNIST file of that name
    (:data:`CHECKSUMS`); files with other names cannot be verified and are refused."""
    name = os.path.basename(path)[: -len(".gz")] if path.endswith(".gz") else os.path.basename(path)
    if name not in CHECKSUMS:
        raise DataError(f"{path}: is not one of the Fashion-MNIST files ({', '.join(CHECKSUMS)}), so it cannot be "
                        f"verified; rename it or pass verify=False")
    _check_checksum(content, name, path, f"{fix_for(path)}, or pass verify=False if these are your own IDX files")
