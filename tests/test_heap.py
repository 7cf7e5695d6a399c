"""common.heap: glibc keeps large freed blocks for reuse once asked, and only then (framework-free).

The setting is process-wide and cannot be undone, so each case runs in a fresh interpreter: it
allocates a 64 MiB NumPy array (NumPy takes its data from ``malloc``) and reads glibc's
``mallinfo2``: the bytes held in mmap'd blocks (``hblkhd``).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from common import heap

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import ctypes, json, sys
import numpy as np
from common import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
block = np.ones(64 << 18, dtype=np.float32)  # 64 MiB
mapped_while_held = libc.mallinfo2().hblkhd
del block
freed_and_kept = libc.mallinfo2().fordblks
print(json.dumps({"applied": applied, "again": heap.keep_freed_memory() if applied else False,
                  "keeps": heap.keeps_freed_memory(), "mapped": mapped_while_held, "free_kept": freed_and_kept}))
"""


def _probe(mode, **env):
    completed = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT,
                               env=dict(os.environ, **env), timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_large_blocks_come_from_the_heap_and_stay_there_once_asked():
    kept = _probe("keep", RESNET_KEEP_FREED_MEMORY="1")
    assert kept["applied"] and kept["again"] and kept["keeps"]
    assert kept["mapped"] < 1 << 20, "a 64 MiB block was still mmap'd"
    assert kept["free_kept"] >= 64 << 20, "the freed 64 MiB went back to the system"


def test_malloc_is_left_alone_by_default_and_when_switched_off():
    untouched = _probe("leave")
    assert not untouched["keeps"] and untouched["mapped"] >= 64 << 20  # glibc's default: mmap'd
    off = _probe("keep", RESNET_KEEP_FREED_MEMORY="0")
    assert not off["applied"] and not off["keeps"] and off["mapped"] >= 64 << 20


def test_a_bad_setting_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(heap.KEEP_FREED_MEMORY_ENV, "sometimes")
    with pytest.raises(ValueError, match=r"RESNET_KEEP_FREED_MEMORY='sometimes': use 1 .* or 0"):
        heap._wanted()


def test_the_resident_peak_restarts_from_what_is_in_use():
    assert heap.reset_peak_resident()
    assert heap.peak_resident_mb() > 0
