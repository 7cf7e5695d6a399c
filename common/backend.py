"""The registry of backends, and how :mod:`common` reaches one: by name, through the contract.

:data:`BACKENDS` names the four backends (one row each; a fifth backend is one more row).
:func:`backend_part` returns one module of a backend (its ``model``, ``train``, ``distributed``,
``launch``, ...), the one way :mod:`common` finds a backend's parts; what each part provides is
:mod:`common.contract`. :func:`load_backend` returns the package, whose ``Trainer`` and the
chapter's names are its ``model``'s, ``data``'s and ``train``'s (:func:`lazy_exports`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Dict, NamedTuple

__all__ = ["Backend", "BACKENDS", "BackendUnavailable", "device_label", "check_installed", "backend_part",
           "load_backend", "lazy_exports", "physical_cpu_cores"]


class Backend(NamedTuple):
    """One backend: its package, its framework's name, the module whose absence means "not
    installed", and the pip extra that installs it."""

    package: str
    framework: str
    module: str
    extra: str


#: Short name (``--backend``, ``RESNET_BACKEND``, the tox environment) -> :class:`Backend`.
BACKENDS: Dict[str, Backend] = {
    "torch": Backend("resnet_torch", "PyTorch", "torch", "torch"),
    "tf": Backend("resnet_tf", "TensorFlow", "tensorflow", "tf"),
    "mx": Backend("resnet_mx", "MXNet", "mxnet", "mx"),
    "jax": Backend("resnet_jax", "JAX", "jax", "jax"),
}


def device_label(kind: str, index: int = 0) -> str:
    """How runs name a device: ``"cpu"``, or ``kind:index`` (``"cuda:0"`` in PyTorch, ``"gpu:0"`` elsewhere)."""
    return "cpu" if kind == "cpu" else f"{kind}:{index}"


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed (or does not import) here."""


def _package(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def _unavailable(name: str, reason: str) -> BackendUnavailable:
    framework, extra = _package(name).framework, _package(name).extra
    return BackendUnavailable(f"backend '{name}' needs {framework}, which {reason}; install it with "
                              f"pip install 'resnet-fmnist[{extra}]' or run in its tox environment (tox -e {name})")


def check_installed(name: str) -> None:
    """A one-line :class:`BackendUnavailable` unless backend ``name``'s framework is installed (not imported)."""
    if importlib.util.find_spec(_package(name).module) is None:
        raise _unavailable(name, "is not installed here")


def backend_part(name: str, part: str):
    """The module ``part`` (a key of :data:`common.contract.PARTS`) of backend ``name``: the one way
    :mod:`common` reaches a backend. A framework part raises :class:`BackendUnavailable` (one line:
    what to install) where the framework does not import; ``launch`` imports no framework."""
    from .contract import PARTS

    if part not in PARTS:
        raise ValueError(f"unknown part {part!r} of a backend; the contract's parts: {', '.join(PARTS)}")
    package, module = _package(name).package, _package(name).module
    # The backend package comes first (not the framework): it may set the framework's
    # environment (threads, log level) before the framework's first import reads it.
    try:
        return importlib.import_module(f"{package}.{part}")
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if missing != module and importlib.util.find_spec(module) is not None:
            raise  # the framework is there: a genuine error in the backend, not a missing install
        raise _unavailable(name, f"does not import in this environment ({error})") from None


def load_backend(name: str):
    """The backend package for ``name`` (a key of :data:`BACKENDS`), its framework imported: the
    chapter's names and ``Trainer`` are its attributes (``load_backend("torch").Residual``)."""
    from .contract import EXPORTED_PARTS

    for part in EXPORTED_PARTS:
        backend_part(name, part)
    return _exported(_package(name).package)


def _exported(package: str):
    """The package ``package`` with the names of its exported parts set on it (they win over a
    submodule of the same name: ``resnet_torch.train`` is the function, as the chapter calls it)."""
    from .contract import EXPORTED_PARTS

    module = sys.modules[package] if package in sys.modules else importlib.import_module(package)
    names = []
    for part in EXPORTED_PARTS:
        source = importlib.import_module(f"{package}.{part}")
        for name in source.__all__:
            setattr(module, name, getattr(source, name))
        names.extend(source.__all__)
    module.__all__ = names
    return module


def lazy_exports(package: str):
    """``(__getattr__, __dir__)`` for a backend package's ``__init__`` (PEP 562, as SPEC 1's lazy
    loading): the package re-exports the names of its :data:`common.contract.EXPORTED_PARTS`
    modules (their ``__all__``) and imports them, and with them its framework, on the first use
    of one, so that its framework-free ``launch`` imports without the framework. Its other
    modules (``kernels``, ``distributed``, ...) are attributes once imported, or on first use."""
    from .contract import EXPORTED_PARTS, PARTS

    def __getattr__(name):
        if name in PARTS and name not in EXPORTED_PARTS:
            return importlib.import_module(f"{package}.{name}")
        if name.startswith("__") and name != "__all__":
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = _exported(package)
        if name in module.__dict__:
            return module.__dict__[name]
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(_exported(package).__all__) | set(PARTS))

    return __getattr__, __dir__


def physical_cpu_cores(cpus=None, sysfs: str = "/sys/devices/system/cpu") -> int:
    """Number of distinct physical cores among ``cpus`` (default: those this process may run on).

    Hyper-threads of one core count once (Linux's topology under ``sysfs``); where the
    topology is not readable, every CPU counts.
    """
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cpus = sorted(cpus)
    cores = set()
    for cpu in cpus:
        topology = os.path.join(sysfs, f"cpu{cpu}", "topology")
        try:
            with open(os.path.join(topology, "physical_package_id")) as package, \
                    open(os.path.join(topology, "core_id")) as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))
