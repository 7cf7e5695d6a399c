"""Files this project writes: each replaced atomically, and one cache directory for all of them.

:func:`atomic_write` is how checkpoints, weights, metrics, the downloaded data and the
autotuning table reach the disk; :func:`cache_dir` is where the download and the autotuning
table live.
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["CACHE_NAME", "TEMPORARY_PREFIX", "atomic_write", "cache_dir"]

#: This project's directory under the user's cache directory.
CACHE_NAME = "resnet-fmnist"
#: How :func:`atomic_write`'s temporary files begin.
TEMPORARY_PREFIX = ".tmp-"


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it.

    A crash or an exception part-way (``write`` may raise to refuse what it wrote) leaves
    ``path`` as it was (or absent), never half written, and no temporary file behind; a process
    killed by a signal leaves its temporary file, which a run directory's lock removes when the
    run ends (:func:`common.training.run_directory_lock`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cache_dir(*parts: str) -> str:
    """``$XDG_CACHE_HOME/resnet-fmnist/<parts...>``, with ``~/.cache`` for ``$XDG_CACHE_HOME``
    when it is unset, empty or relative (the XDG Base Directory spec says to ignore a relative
    path). Nothing is created."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, CACHE_NAME, *parts)
