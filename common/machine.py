"""The machine's fp32 peak: the one yardstick every backend's speed is measured against.

Two figures, side by side. The *measured* peak is the best fp32 matrix product GFLOP/s found
across several sizes and every implementation at hand (NumPy's BLAS and each framework's own
``matmul``), since one framework's 2048 x 2048 product can be 2x another's on the same CPU.
The *theoretical* peak is cores x fp32 lanes per vector x 2 (FMA) x FMA units x clock, read
from ``/proc/cpuinfo`` where it can be; the FMA-unit count cannot be read, and is assumed 2
(what every x86-64 server core of the last decade has, bar some Xeon Silver/Bronze parts).
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict, Iterable, Optional

import numpy as np

from .backend import physical_cpu_cores

__all__ = ["MATMUL_SIZES", "FMA_UNITS", "cpu_info", "describe", "theoretical_peak_gflops", "numpy_matmul_gflops",
           "best_matmul_gflops"]

#: Square matrix sizes the measured peak tries (one BLAS may peak at 1024, another at 4096).
MATMUL_SIZES = (512, 1024, 2048, 3072)
#: Vector extension -> fp32 lanes per FMA instruction, widest first.
_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8), ("sse2", 4))
#: FMA units per core assumed by the theoretical peak (not readable from the CPU).
FMA_UNITS = 2


def _cpuinfo(path: str = "/proc/cpuinfo") -> Dict[str, str]:
    fields: Dict[str, str] = {}
    try:
        with open(path) as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _max_clock_ghz(fields: Dict[str, str]) -> Optional[float]:
    # cpufreq's maximum where the kernel exposes it; a VM often has only cpuinfo's nominal clock.
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as handle:
            return int(handle.read()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(fields["cpu MHz"]) / 1e3
    except (KeyError, ValueError):
        return None


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """Model, vector extensions, fp32 lanes, clock (GHz) and physical cores of this machine."""
    fields = _cpuinfo(path)
    flags = set(fields.get("flags", "").split())
    extensions = sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "fma")
    lanes = next((width for flag, width in _LANES if flag in flags), None)
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "vector_extensions": extensions,
        "fp32_lanes": lanes,
        "fma": "fma" in flags or "avx512f" in flags,
        "clock_ghz": _max_clock_ghz(fields),
        "cores": physical_cpu_cores(),
        "cpus": os.cpu_count(),
    }


def theoretical_peak_gflops(info: Optional[dict] = None) -> Optional[float]:
    """cores x lanes x 2 (multiply-add) x :data:`FMA_UNITS` x clock; None where a factor is unknown."""
    info = info or cpu_info()
    if not info["fp32_lanes"] or not info["clock_ghz"]:
        return None
    per_cycle = info["fp32_lanes"] * 2 * (FMA_UNITS if info["fma"] else 1)
    return round(info["cores"] * per_cycle * info["clock_ghz"], 1)


def numpy_matmul_gflops(size: int, repeats: int = 3) -> float:
    """NumPy's (its BLAS's) fp32 ``size x size`` matrix product, best of ``repeats``, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    a @ b  # warm-up: threads, pages
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def best_matmul_gflops(matmuls: Dict[str, Callable[[int], float]],
                       sizes: Iterable[int] = MATMUL_SIZES) -> dict:
    """The measured peak: every ``name -> matmul(size) GFLOP/s`` at every size; the best wins."""
    table: Dict[str, Dict[int, float]] = {}
    for name, matmul in matmuls.items():
        table[name] = {size: round(matmul(size), 1) for size in sizes}
    best_name, best_size = max(((n, s) for n in table for s in table[n]), key=lambda ns: table[ns[0]][ns[1]])
    return {"gflops": table[best_name][best_size], "by": best_name, "size": best_size,
            "table": {name: {str(s): g for s, g in row.items()} for name, row in table.items()}}


def describe(info: Optional[dict] = None) -> str:
    """One line naming the CPU for a benchmark table: model, cores, vector extensions, clock."""
    info = info or cpu_info()
    widest = next((flag for flag, _ in _LANES if flag in info["vector_extensions"]), "SSE")
    amx = " + AMX" if any(e.startswith("amx") for e in info["vector_extensions"]) else ""
    clock = f", {info['clock_ghz']:.2f} GHz" if info["clock_ghz"] else ""
    return f"{info['model']}, {info['cores']} cores, {widest.upper()}{amx}{clock}"

