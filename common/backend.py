"""Choosing a backend, and the interface every backend package provides.

``resnet_torch``, ``resnet_tf`` and ``resnet_mx`` are mirror images: the same modules
(``model.py``, ``data.py``, ``train.py``) and, inside each, the same public names in the
same order. Everything framework-free (architecture, hyperparameters, initial weights, data,
the training loop, checkpoints, the command line) lives once in :mod:`common`; a backend only
supplies the framework's side:

``model.py``
    ``DATA_FORMAT`` ("NCHW" or "NHWC": the layout the network takes), the chapter's blocks
    (``Residual``, ``resnet_block``) first, then the exercises' blocks (``Bottleneck``,
    ``ResNeXtBlock`` with the book's signature, ``PreActResidual``, ``PreActBottleneck``),
    ``BLOCK_BUILDERS`` (:attr:`common.spec.ResNetSpec.block_kind` -> block from a
    :class:`common.spec.BlockConfig` and the spec), ``ResNet``, ``resnet(arch, num_classes,
    in_channels, style="d2l", plain=None)`` and one builder per architecture (``resnet18(num_classes=10,
    in_channels=1, style="d2l", plain=None)``, ``resnet34``, ... ``resnext50_32x4d``; see
    :func:`plain_layers`), ``architecture(net)`` (``(spec, in_channels, num_classes)``, the spec
    with its style), ``canonical_variables(net)``, ``export_weights(net)`` /
    ``import_weights(net, weights)`` in canonical names and layouts (see
    :mod:`common.spec`), ``forward(net, images, training=False)`` (NCHW NumPy in, NumPy
    logits out; ``training=True`` uses batch statistics and updates the running ones) and
    ``trace_shapes(net, images)`` (the chapter's layer-by-layer loop, shapes reported NCHW).
``data.py``
    ``to_tensor(array, device=None)`` and ``to_numpy(tensor)``, the one place where canonical
    NCHW NumPy batches become the framework's tensors in ``DATA_FORMAT`` and back, and the
    chapter's ``load_data_fashion_mnist(batch_size, resize=None)``.
``kernels.py``
    What exists for speed or exact agreement: the helpers the chapter's code uses by name where
    the framework's own layer does not compute the reference function (``batch_norm``, ...),
    ``use_fast_layers(net)`` (binds the fast paths into a built network; the same function)
    and ``fast_layer_count(net)``.
``train.py``
    ``try_gpu(i=0)``; ``Trainer``, a subclass of :class:`Trainer` below, the adapter that
    :func:`common.training.fit` drives; ``loss_and_gradients(net, images, labels)``;
    ``train(...)``, ``evaluate(...)`` and the chapter's ``train_ch6(net, train_iter, test_iter,
    num_epochs, lr, device)``: :mod:`common.training`'s with this backend.

``distributed.py``
    Data-parallel training on the framework's own engine (see :mod:`common.distributed`):
    ``ENGINE`` (its name, as ``metrics.json`` records it), ``initialize(device=None)`` (join the
    job the environment describes; ``(rank, world_size)``), ``DistributedTrainer`` (a ``Trainer``
    whose step averages gradients and BatchNorm running statistics over the workers, as
    :func:`common.oracle.sharded_sgd_step` does) and ``shutdown()``.
``reference.py``
    ``ReferenceTrainer(device=None)``: the chapter's own, unmodified network and training step
    for the framework behind the same :class:`Trainer` contract, so ``resnet-fmnist bench
    --reference`` times the book's code exactly as it times this project's.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["Backend", "BACKENDS", "BackendUnavailable", "PLAIN_LAYERS_ENV", "Trainer", "device_label", "load_backend",
           "physical_cpu_cores", "plain_layers"]


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


#: Set to 1, every backend builds its networks from the framework's own layers only (see
#: :func:`plain_layers`).
PLAIN_LAYERS_ENV = "RESNET_PLAIN_LAYERS"


def plain_layers(plain: Optional[bool] = None) -> bool:
    """Whether to build a network from the framework's own layers only, leaving out the fast
    paths of the backend's ``kernels.py`` (which compute the same function; the oracle tests
    run both ways). ``None``: ``RESNET_PLAIN_LAYERS=1`` in the environment says plain."""
    if plain is None:
        value = os.environ.get(PLAIN_LAYERS_ENV, "0").strip()
        if value not in ("0", "1", ""):
            raise ValueError(f"{PLAIN_LAYERS_ENV} must be 0 or 1, got {value!r}")
        return value == "1"
    return bool(plain)


def device_label(kind: str, index: int = 0) -> str:
    """How runs name a device: ``"cpu"``, or ``kind:index`` (``"cuda:0"`` in PyTorch, ``"gpu:0"`` elsewhere)."""
    return "cpu" if kind == "cpu" else f"{kind}:{index}"


class Trainer(abc.ABC):
    """One network, its plain-SGD optimizer and its loss on one device: what every backend's
    ``Trainer`` (and ``ReferenceTrainer``) provides for :mod:`common.training` and
    :mod:`common.bench`.

    Constructed as ``Trainer(net=None, *, arch="resnet18", style="d2l", num_classes=10,
    in_channels=1, lr=0.05, device=None, precision="fp32", deterministic=True)``; ``net=None``
    builds ``resnet(arch, num_classes, in_channels, style)``. ``precision`` is one of
    :data:`common.hparams.PRECISIONS` (``fp32`` exact, TF32 off; ``tf32`` a GPU's TF32; ``bf16``
    the framework's mixed precision: bfloat16 convolutions and dense layers, float32 weights,
    BatchNorm and loss), ``deterministic`` the framework's own switches for bit-identical GPU
    reruns; each backend's ``set_precision(precision, deterministic, device)`` sets its
    process-wide switches, and the Trainer stores both as ``precision`` and ``deterministic``.
    A backend's ``reference.ReferenceTrainer(device=None, precision=None)`` runs the chapter's
    code with the framework's defaults, or with this project's settings for ``precision``.
    """

    #: Short name of the backend ("torch").
    backend: str = ""
    #: Framework and version ("PyTorch 2.13.0").
    framework: str = ""
    #: The device, as :func:`device_label` names it; set by the constructor.
    device_name: str = "cpu"
    #: The network being trained.
    net = None
    #: This process's rank among the workers of a data-parallel job, their number, and the engine
    #: that joins them (``None`` for a single process); see :mod:`common.distributed`. A backend's
    #: ``distributed.DistributedTrainer`` sets them; its ``train_step`` takes the worker's shard of
    #: each batch and returns the loss and number correct summed over all workers' shards.
    rank: int = 0
    world_size: int = 1
    engine: Optional[str] = None

    @property
    @abc.abstractmethod
    def lr(self) -> float:
        """The learning rate; settable."""

    @abc.abstractmethod
    def to_batch(self, images, labels):
        """NCHW NumPy images and integer labels (or the backend loaders' tensors) -> the
        framework's tensors on the device, images in the backend's ``DATA_FORMAT``."""

    @abc.abstractmethod
    def train_step(self, x, y):
        """One SGD step; ``(loss summed over the batch, number correct)`` as framework
        scalars, without waiting for the device."""

    @abc.abstractmethod
    def eval_step(self, x, y):
        """``(loss summed over the batch, number correct)`` in eval mode, as framework scalars."""

    @abc.abstractmethod
    def to_host(self, values) -> List[float]:
        """Python floats of framework scalars: the one place that waits for the device."""

    @abc.abstractmethod
    def export_weights(self) -> Dict[str, np.ndarray]:
        """Canonical name -> float32 NumPy array (see :mod:`common.spec`)."""

    @abc.abstractmethod
    def import_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy canonical weights into the network exactly."""

    @abc.abstractmethod
    def architecture(self) -> Tuple["ResNetSpec", int, int]:
        """``(spec, in_channels, num_classes)`` of the network: its :class:`common.spec.ResNetSpec`
        (architecture and style)."""

    @abc.abstractmethod
    def matmul_gflops(self, size: int = 2048, repeats: int = 5) -> float:
        """The framework's own fp32 ``size x size`` matrix multiply on the device, in GFLOP/s."""

    def peak_memory_bytes(self) -> Optional[int]:
        """Peak device memory where the framework reports it (GPUs); ``None`` elsewhere, and
        bench then reports the process's peak resident memory."""
        return None

    @property
    def sync_every(self) -> int:
        """Steps between reads of the loss: every step on the CPU, where a read costs nothing;
        every 50 on a GPU, where each read stalls the pipeline."""
        return 1 if self.device_name == "cpu" else 50


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed (or does not import) here."""


def load_backend(name: str):
    """Import and return the backend package for ``name`` ("torch", "tf" or "mx")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    package, framework, module, extra = BACKENDS[name]
    # The backend package comes first (not the framework): it may set the framework's
    # environment (threads, log level) before the framework's first import reads it.
    try:
        return importlib.import_module(package)
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
