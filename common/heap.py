"""The C heap a process's tensors live on: keep freed blocks for the next step (glibc's ``mallopt``).

glibc's ``malloc`` serves a block of more than its mmap threshold (at most 32 MiB on 64-bit
Linux) with a fresh ``mmap`` and unmaps it on ``free``. A framework that allocates its CPU tensors
with ``malloc`` and keeps no pool of its own, PyTorch on the CPU, then maps, faults in and has the
kernel zero every large activation and gradient again on every training step: at 96 x 96,
batch 64, the stem's outputs and their gradients are 37.7 MB each, and the page faults cost this
project's training step up to a tenth of its time and the chapter's code a fifth or more
(docs/benchmarks.md, "The C heap and the bias gradient"). :func:`keep_freed_memory` makes ``malloc``
take every block from its heap (``M_MMAP_MAX`` = 0) and keep up to 1 GiB of freed memory there
(``M_TRIM_THRESHOLD``), so a step reuses the pages the step before freed. TensorFlow, MXNet and
XLA pool their own buffers: measured, the setting changes nothing there, and only
:class:`resnet_torch.train.Trainer` takes it.

It is process-wide, cannot be undone, and is what glibc's own tunables
(``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``) set at start-up. It
changes where memory comes from, not a number computed. ``RESNET_KEEP_FREED_MEMORY=0`` leaves
``malloc`` as it is; on a C library other than glibc nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["KEEP_FREED_MEMORY_ENV", "TRIM_THRESHOLD", "keep_freed_memory", "keeps_freed_memory", "reset_peak_resident",
           "peak_resident_mb"]

#: ``0`` (or ``false``/``no``/``off``) leaves glibc's ``malloc`` with its defaults.
KEEP_FREED_MEMORY_ENV = "RESNET_KEEP_FREED_MEMORY"
#: Freed memory glibc keeps on its heap before it gives any back to the system.
TRIM_THRESHOLD = 1 << 30
# <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4

_applied = False


def _wanted() -> bool:
    value = os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{KEEP_FREED_MEMORY_ENV}={value!r}: use 1 to keep freed memory for reuse or 0 to leave malloc "
                     f"as it is")


def keep_freed_memory() -> bool:
    """Serve large blocks from glibc's heap and keep freed ones for reuse (once per process);
    returns whether the process now does. A no-op returning ``False`` where the C library is not
    glibc or ``RESNET_KEEP_FREED_MEMORY=0``."""
    global _applied
    if _applied or not _wanted():
        return _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success.
    _applied = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
    return _applied


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has taken effect in this process."""
    return _applied


def reset_peak_resident() -> bool:
    """Restart this process's resident peak (Linux's VmHWM) from its current size
    (``/proc/self/clear_refs``); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_mb():
    """This process's resident peak in MiB since :func:`reset_peak_resident` (Linux's VmHWM), else
    since it started (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
