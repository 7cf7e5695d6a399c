"""Choosing a backend, and the interface every backend package provides.

``resnet_torch``, ``resnet_tf`` and ``resnet_mx`` are mirror images: the same modules
(``model.py``, ``data.py``, ``train.py``) and, inside each, the same public names in the
same order. Everything framework-free (architecture, hyperparameters, initial weights, data,
the training loop, checkpoints, the command line) lives once in :mod:`common`; a backend only
supplies the framework's side:

``model.py``
    ``DATA_FORMAT`` ("NCHW" or "NHWC": the layout the network takes), the chapter's blocks
    (``Residual``, ``resnet_block``), ``resnet(arch, num_classes, in_channels)`` and
    ``resnet18(num_classes=10, in_channels=1)``, ``export_weights(net)`` /
    ``import_weights(net, weights)`` in canonical names and layouts (see
    :mod:`common.spec`), ``forward(net, images, training=False)`` (NCHW NumPy in, NumPy
    logits out; ``training=True`` uses batch statistics and updates the running ones) and
    ``trace_shapes(net, images)`` (the chapter's layer-by-layer loop, shapes reported NCHW).
``data.py``
    ``to_tensor(array, device=None)`` and ``to_numpy(tensor)``, the one place where canonical
    NCHW NumPy batches become the framework's tensors in ``DATA_FORMAT`` and back, and the
    chapter's ``load_data_fashion_mnist(batch_size, resize=None)``.
``train.py``
    ``try_gpu(i=0)``; ``Trainer`` (below), the adapter that :func:`common.training.fit` drives;
    ``loss_and_gradients(net, images, labels)``; ``train(...)`` and ``evaluate(...)``
    (:func:`common.training.train` / :func:`common.training.evaluate` with this backend);
    and the chapter's ``train_ch6(net, train_iter, test_iter, num_epochs, lr, device)``.

``Trainer(net=None, *, arch="resnet18", num_classes=10, in_channels=1, lr=0.05, device=None)``
    ``backend`` (short name), ``framework`` ("PyTorch 2.13.0"), ``device_name``, ``net``;
    ``to_batch(images, labels)`` -> framework tensors on the device (takes NCHW NumPy or
    tensors the backend's own loaders made); ``train_step(x, y)`` and ``eval_step(x, y)``
    -> ``(loss_sum, num_correct)`` as framework scalars, without waiting for the device;
    ``to_host(values)`` -> Python floats (the only place that synchronises);
    ``export_weights()`` / ``import_weights(weights)``; ``matmul_gflops(size=2048, repeats=5)``
    (the framework's own fp32 matrix multiply on the device, the benchmark's yardstick) and,
    on a GPU, ``peak_memory_bytes()``.

``reference.py``
    ``ReferenceTrainer(device=None)``: the chapter's own, unmodified network and training step
    for the framework behind the same Trainer interface, so ``resnet-fmnist bench --reference``
    times the book's code exactly as it times this project's.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

__all__ = ["BACKENDS", "FRAMEWORKS", "BackendUnavailable", "load_backend", "physical_cpu_cores"]

#: Short name -> package.
BACKENDS = {"torch": "resnet_torch", "tf": "resnet_tf", "mx": "resnet_mx"}
#: Short name -> (framework, the module whose absence means "not installed", pip extra).
FRAMEWORKS = {
    "torch": ("PyTorch", "torch", "torch"),
    "tf": ("TensorFlow", "tensorflow", "tf"),
    "mx": ("MXNet", "mxnet", "mx"),
}


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed (or does not import) here."""


def load_backend(name: str):
    """Import and return the backend package for ``name`` ("torch", "tf" or "mx")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    framework, module, extra = FRAMEWORKS[name]
    # The backend package comes first (not the framework): it may set the framework's
    # environment (threads, log level) before the framework's first import reads it.
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if missing != module and importlib.util.find_spec(module) is not None:
            raise  # the framework is there: a genuine error in the backend, not a missing install
        raise BackendUnavailable(
            f"backend '{name}' needs {framework}, which does not import in this environment ({error}); "
            f"install it with pip install 'resnet-fmnist[{extra}]' or run in its tox environment (tox -e {name})"
        ) from None


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
