"""Fast paths chosen by a short measurement on the machine at hand, as cuDNN's autotuning does.

A backend's fast path (a convolution as a matrix product, XLA for the whole step, ...) wins on
one CPU and can lose on another: what was measured on an AVX2 EPYC does not hold on AVX-512.
So where a backend has more than one exact way to compute a layer, it asks :func:`choose` with
the candidates for that layer and shape; on first use each is timed a few times and the fastest
is kept, in memory and in a JSON cache per machine (CPU model, vector extensions, cores) and
framework version, so the next process does not measure again. Every candidate computes the
same function (the oracle tests run each way), so the choice changes speed only.

``RESNET_FAST_PATHS`` forces the choice: ``auto`` (the default) measures, ``fast`` always takes
the backend's fast path, ``native`` always the framework's own layer. ``RESNET_AUTOTUNE_CACHE``
names the cache file (default ``$XDG_CACHE_HOME/resnet-fmnist/autotune.json``).
"""
from __future__ import annotations

import functools
import json
import os
import threading
import time
import warnings
from typing import Callable, Dict, Sequence

from .files import atomic_write, cache_dir
from .machine import cpu_info

__all__ = ["FAST_PATHS_ENV", "CACHE_ENV", "NATIVE", "fast_paths_mode", "cache_path", "machine_key", "choose",
           "time_call", "clear_memory", "on_own_thread"]

FAST_PATHS_ENV = "RESNET_FAST_PATHS"
CACHE_ENV = "RESNET_AUTOTUNE_CACHE"
#: The name of the framework's own path among a site's candidates.
NATIVE = "native"
_MODES = ("auto", "fast", "native")

#: (framework, site) -> choice, for this process.
_MEMORY: Dict[tuple, str] = {}


def fast_paths_mode() -> str:
    """``auto``, ``fast`` or ``native``, from ``RESNET_FAST_PATHS`` (unset or empty: ``auto``)."""
    value = os.environ.get(FAST_PATHS_ENV, "").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"{FAST_PATHS_ENV}={os.environ[FAST_PATHS_ENV]!r}: use auto (measure once per machine), "
                         "fast (always the fast paths) or native (always the framework's own layers)")
    return value


def cache_path() -> str:
    """``$RESNET_AUTOTUNE_CACHE``, else ``autotune.json`` in :func:`common.files.cache_dir`."""
    return os.environ.get(CACHE_ENV) or cache_dir("autotune.json")


@functools.lru_cache(maxsize=None)
def machine_key(framework: str) -> str:
    """What a measured choice holds for: this CPU, its cores, and the framework's version."""
    info = cpu_info()
    return f"{info['model']} | {','.join(info['vector_extensions'])} | {info['cores']} cores | {framework}"


def _read(path: str) -> dict:
    try:
        with open(path) as handle:
            table = json.load(handle)
        if not isinstance(table, dict):
            raise ValueError("not a JSON object")
        return table
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as error:
        warnings.warn(f"ignoring the autotuning cache {path} ({error}); it is measured again and rewritten")
        return {}


def _store(path: str, machine: str, site: str, entry: dict) -> None:
    """Add one choice to the cache file: re-read, merge, replace atomically (a concurrent
    process's entries are kept; a failed write leaves the old file)."""
    try:
        table = _read(path)
        table.setdefault(machine, {})[site] = entry
        text = json.dumps(table, indent=1, sort_keys=True)
        atomic_write(path, lambda handle: handle.write(text.encode()))
    except OSError as error:  # a read-only home: the choice still holds for this process
        warnings.warn(f"could not write the autotuning cache {path} ({error})")


def time_call(run: Callable[[], None]) -> float:
    """Seconds one call of ``run`` (which waits for its own result) takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def choose(framework: str, site: str, paths: Sequence[str], make_run: Callable[[str], Callable[[], None]],
           repeats: int = 3, timer: Callable[[Callable[[], None]], float] = time_call) -> str:
    """The path to take at ``site`` (a string naming the layer and its shapes), one of ``paths``.

    ``paths`` lists the fast paths in order of preference, then :data:`NATIVE`, the framework's
    own. Only in ``auto`` mode, and only for a site this machine and framework have not measured,
    is anything timed: ``make_run(path)`` returns a zero-argument callable that runs the layer
    once that way on inputs of the site's shapes and waits for the result. Each path runs once to
    warm up, then ``repeats`` times, the paths taking turns; the best time of each counts.
    """
    mode = fast_paths_mode()
    if mode == "native" or len(paths) == 1:
        return NATIVE if NATIVE in paths else paths[0]
    if mode == "fast":
        return next((path for path in paths if path != NATIVE), NATIVE)
    file, machine = cache_path(), machine_key(framework)
    remembered = _MEMORY.get((file, machine, site))
    if remembered in paths:
        return remembered
    entry = _read(file).get(machine, {}).get(site)
    if isinstance(entry, dict) and entry.get("choice") in paths:
        _MEMORY[file, machine, site] = entry["choice"]
        return entry["choice"]
    runs = {path: make_run(path) for path in paths}
    for run in runs.values():
        run()  # warm-up: compiling, caches, allocation
    seconds = dict.fromkeys(paths, float("inf"))
    for _ in range(repeats):  # interleaved, so a slow spell of a shared machine hits every path
        for path, run in runs.items():
            seconds[path] = min(seconds[path], timer(run))
    choice = min(seconds, key=seconds.get)
    _MEMORY[file, machine, site] = choice
    _store(file, machine, site, {"choice": choice, "ms": {p: round(s * 1e3, 3) for p, s in seconds.items()}})
    return choice


def clear_memory() -> None:
    """Forget this process's choices (the cache file stays): the next :func:`choose` reads it again."""
    _MEMORY.clear()


def on_own_thread(function):
    """``function()`` run on a thread of its own and its result (or exception) handed back.

    How a layer measures its paths while a step is being traced: TensorFlow's and JAX's tracing
    (and TensorFlow's gradient tapes) are per thread, so the measurement neither records into
    the step nor is traced into it."""
    result = {}

    def target():
        try:
            result["value"] = function()
        except BaseException as error:  # re-raised on the caller's thread
            result["error"] = error
    thread = threading.Thread(target=target, name="autotune")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
