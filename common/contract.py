"""The backend contract, as code: what every backend package provides, name by name.

A backend is a package (``resnet_torch``, ``resnet_tf``, ``resnet_mx``, ``resnet_jax``; the
registry is :data:`common.backend.BACKENDS`) holding the modules below, each with the names of
its protocol class here, in the same order, with the same signatures. Everything framework-free
(architecture, weights, data, the training loop, checkpoints, the command line) lives once in
:mod:`common`, which reaches a backend only through these names, by
:func:`common.backend.backend_part`. ``tests/test_contract.py`` checks every installed backend
against this module with :func:`check`.

=============== ==========================================================================
``model``       the chapter's blocks and network, the exercises', weights in canonical names
``data``        NumPy batches to the framework's tensors and back; the chapter's loader
``kernels``     what exists for speed or exact agreement (:mod:`common.fastpaths`)
``train``       the :class:`Trainer` that :func:`common.training.fit` drives; the chapter's API
``distributed`` data-parallel training on the framework's own engine
``reference``   the chapter's own code behind the :class:`Trainer` contract, for ``bench``
``launch``      the engine's job description, for the launcher: imports no framework
=============== ==========================================================================

The package itself re-exports the names of ``model``, ``data`` and ``train`` (``import
resnet_torch as d2l; d2l.Residual``) and imports its framework on first use of one, so
``launch`` is importable where the framework is not installed.

A backend may define more (the framework's own helpers); the contract is what :mod:`common`,
the tests and a user switching backends may rely on. The docstrings here are the documentation of
each name; a backend's own docstring adds only what is particular to its framework.
"""
from __future__ import annotations

import abc
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Type

import numpy as np

from .fastpaths import Layers
from .heap import reset_peak_resident
from .spec import BLOCK_EXPANSION

__all__ = ["Trainer", "Model", "Data", "Kernels", "Train", "Distributed", "Reference", "Launch", "PARTS",
           "FRAMEWORK_FREE_PARTS", "EXPORTED_PARTS", "TRAINER_ARGUMENTS", "check"]


class Trainer(abc.ABC):
    """One network, its optimizer and schedule and its loss on one device: what every backend's
    ``Trainer`` (and ``DistributedTrainer``, ``ReferenceTrainer``) provides for
    :mod:`common.training` and :mod:`common.bench`.

    Constructed as ``Trainer(net=None, *, arch="resnet18", style="d2l", num_classes=10,
    in_channels=1, lr=0.05, device=None, precision="fp32", deterministic=True, recipe=None)``
    (:data:`TRAINER_ARGUMENTS`). ``recipe`` (a :class:`common.optim.Recipe`; ``None``: the
    chapter's plain SGD at the constant ``lr``) is the optimizer, schedule, loss and evaluation
    views, built from the framework's own optimizer and schedule objects configured to compute
    :mod:`common.optim`'s math; the Trainer stores it as ``recipe``. ``net=None`` builds
    ``resnet(arch, num_classes, in_channels, style)`` with fast paths, a given ``net`` is trained
    as built (:mod:`common.fastpaths`).
    ``precision`` is one of :data:`common.hparams.PRECISIONS` (``fp32`` exact, TF32 off; ``tf32`` a
    GPU's TF32; ``bf16`` the framework's mixed precision: bfloat16 convolutions and dense layers,
    float32 weights, BatchNorm and loss), ``deterministic`` the framework's own switches for
    bit-identical GPU reruns; the Trainer stores both as ``precision`` and ``deterministic``.
    A backend's ``reference.ReferenceTrainer(device=None, lr=0.05, precision=None)`` runs the
    chapter's code with the framework's defaults, or with this project's settings for ``precision``.
    """

    #: Short name of the backend ("torch"): its key in :data:`common.backend.BACKENDS`.
    backend: str = ""
    #: Framework and version ("PyTorch 2.13.0").
    framework: str = ""
    #: The device, as :func:`common.backend.device_label` names it; set by the constructor.
    device_name: str = "cpu"
    #: The network being trained.
    net = None
    #: What it trains with (:class:`common.optim.Recipe`); set by the constructor.
    recipe = None
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
    def export_optimizer_state(self) -> Dict[str, np.ndarray]:
        """The optimizer's state under :mod:`common.optim`'s canonical names: ``step`` (int64, the
        steps taken) and, with momentum, ``momentum_buffer.<name>`` (float64, PyTorch's buffer) per
        trainable array; what a checkpoint holds, whichever backend reads it back."""

    @abc.abstractmethod
    def import_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``state`` (:meth:`export_optimizer_state` of any backend): the schedule at
        step ``state["step"]``, the momentum buffers as given (zero where absent)."""

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
        """Canonical name -> float32 NumPy array (see :mod:`common.naming`)."""

    @abc.abstractmethod
    def import_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy canonical weights into the network exactly."""

    @abc.abstractmethod
    def architecture(self) -> Tuple[Any, int, int]:
        """``(spec, in_channels, num_classes)`` of the network: its :class:`common.spec.ResNetSpec`
        (architecture and style)."""

    @abc.abstractmethod
    def matmul_gflops(self, size: int = 2048, repeats: int = 5) -> float:
        """The framework's own fp32 ``size x size`` matrix multiply on the device, in GFLOP/s."""

    def peak_memory_bytes(self) -> Optional[int]:
        """Peak device memory where the framework reports it (GPUs); ``None`` elsewhere, and
        bench then reports the process's peak resident memory."""
        return None

    def reset_peak_memory(self) -> bool:
        """Restart the count behind :meth:`peak_memory_bytes` (the process's resident peak where
        that is ``None``) from what is in use now; whether it could."""
        return self.peak_memory_bytes() is None and reset_peak_resident()

    @property
    def sync_every(self) -> int:
        """Steps between reads of the loss: every step on the CPU, where a read costs nothing;
        every 50 on a GPU, where each read stalls the pipeline."""
        return 1 if self.device_name == "cpu" else 50


#: What every Trainer class accepts, by keyword, besides ``net``: :class:`Trainer`'s constructor.
TRAINER_ARGUMENTS = dict(arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05, device=None,
                         precision="fp32", deterministic=True, recipe=None)
#: What a ``ReferenceTrainer`` accepts.
_REFERENCE_ARGUMENTS = dict(device=None, lr=0.05, precision=None)


def _block_builder(block, spec, layers):
    """The signature of every ``BLOCK_BUILDERS`` entry."""


# The modules. Functions are written as static methods (their signatures are the contract), other
# names as annotations: ``type`` for a class whose constructor is the framework's (the chapter's
# blocks take what the book's take in that framework), ``Type[Trainer]`` for a Trainer class.

class Model(Protocol):
    """``model.py``: the chapter's code first, in the framework's own layers, then the exercises'."""

    #: "NCHW" or "NHWC": the layout the network takes (canonical batches are NCHW).
    DATA_FORMAT: str
    #: The chapter's residual block, with the book's signature in this framework, and ``conv=``.
    Residual: type

    @staticmethod
    def resnet_block(*args, **kwargs):
        """The chapter's stage of residual blocks, with the book's signature in this framework."""

    #: The exercises' blocks: ResNet-50's bottleneck, the book's ResNeXt block, pre-activation blocks.
    Bottleneck: type
    ResNeXtBlock: type
    PreActResidual: type
    PreActBottleneck: type
    #: :attr:`common.spec.ResNetSpec.block_kind` -> ``builder(block, spec, layers)``: one block from
    #: its :class:`common.spec.BlockConfig`, the network's spec and its :class:`common.fastpaths.Layers`.
    BLOCK_BUILDERS: Mapping[str, Callable]
    #: ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..N, fc), from
    #: ``layers`` (:mod:`common.fastpaths`).
    ResNet: type

    @staticmethod
    def resnet(arch="resnet18", num_classes=10, in_channels=1, style="d2l", plain=None):
        """The network ``arch`` (a name of :data:`common.spec.RESNET_SPECS`, a spec, or the book's
        tuple) in ``style``, built from ``kernels.FAST`` unless :func:`common.fastpaths.plain_layers`
        (``plain``) says ``kernels.PLAIN``; the framework's default initialisation."""

    @staticmethod
    def resnet18(num_classes=10, in_channels=1, style="d2l", plain=None):
        """``resnet("resnet18", ...)``; so for each builder below."""

    @staticmethod
    def resnet34(num_classes=10, in_channels=1, style="d2l", plain=None): ...

    @staticmethod
    def resnet50(num_classes=10, in_channels=1, style="d2l", plain=None): ...

    @staticmethod
    def resnet101(num_classes=10, in_channels=1, style="d2l", plain=None): ...

    @staticmethod
    def resnet152(num_classes=10, in_channels=1, style="d2l", plain=None): ...

    @staticmethod
    def resnext50_32x4d(num_classes=10, in_channels=1, style="d2l", plain=None): ...

    @staticmethod
    def count_parameters(net) -> int:
        """Number of trainable scalars (BatchNorm running statistics are state, not counted)."""

    @staticmethod
    def architecture(net):
        """``(spec, in_channels, num_classes)`` of a ``ResNet`` or of the chapter's network."""

    @staticmethod
    def canonical_variables(net):
        """Canonical name -> the network's own variable, in spec order (:func:`common.naming.canonical_names`)."""

    @staticmethod
    def export_weights(net) -> Dict[str, np.ndarray]:
        """Canonical name -> float32 NumPy copy (OIHW convolutions, ``(out, in)`` dense), in spec order."""

    @staticmethod
    def import_weights(net, weights):
        """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes."""

    @staticmethod
    def forward(net, images, training=False) -> np.ndarray:
        """Logits (NumPy) for an NCHW NumPy batch; ``training=True`` normalises with batch
        statistics and updates the running ones, without a gradient step."""

    @staticmethod
    def trace_shapes(net, images) -> List[Tuple[str, tuple]]:
        """``(stage name, NCHW output shape)`` through stem, layer1..N, pool and fc, in eval mode."""


class Data(Protocol):
    """``data.py``: the one edge where canonical NCHW NumPy batches become the framework's tensors."""

    @staticmethod
    def to_tensor(array, device=None):
        """The framework's tensor of a NumPy array on ``device`` (default: the framework's);
        a rank-4 image batch goes from NCHW to ``DATA_FORMAT``."""

    @staticmethod
    def to_numpy(tensor) -> np.ndarray:
        """NumPy of a framework tensor; a rank-4 image batch back to NCHW."""

    @staticmethod
    def load_data_fashion_mnist(batch_size, resize=None, *, seed=0, data_dir=None, subset=None, test_subset=None,
                                synthetic=False):
        """The chapter's ``(train_iter, test_iter)``: :func:`common.data.chapter_loaders` with
        :func:`to_tensor` (the same pixels in the same order in every backend for ``seed``)."""


class Kernels(Protocol):
    """``kernels.py``: what exists for speed or exact agreement, kept out of ``model.py``."""

    @staticmethod
    def batch_norm(*args, **kwargs):
        """The chapter's BatchNorm with the project's constants (epsilon 1e-5, momentum 0.1 in
        PyTorch's convention, unbiased running variance), with the framework's own arguments."""

    #: The framework's own layers, and the same with fast paths (:mod:`common.fastpaths`).
    PLAIN: Layers
    FAST: Layers

    @staticmethod
    def fast_layer_count(net) -> int:
        """How many layers of ``net`` run a fast path (0 for a network built from ``PLAIN``)."""


class Train(Protocol):
    """``train.py``: the Trainer and the chapter's training API."""

    @staticmethod
    def try_gpu(i=0):
        """The chapter's ``try_gpu``: GPU ``i`` if it exists, else the CPU."""

    #: The adapter :func:`common.training.fit` drives (:class:`Trainer`).
    Trainer: Type[Trainer]

    @staticmethod
    def loss_and_gradients(net, images, labels):
        """``(mean loss, canonical name -> gradient)`` of one train-mode pass, as NumPy, without
        updating the weights: what the oracle tests compare."""

    @staticmethod
    def train(**kwargs):
        """:func:`common.training.train` with this backend."""

    @staticmethod
    def evaluate(**kwargs):
        """:func:`common.training.evaluate` with this backend."""

    @staticmethod
    def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None):
        """The chapter's ``train_ch6``: trains ``net`` as built, prints the chapter's lines."""


class Distributed(Protocol):
    """``distributed.py``: data-parallel training on the framework's own engine (:mod:`common.distributed`)."""

    #: The engine's name, as ``metrics.json`` records it.
    ENGINE: str

    @staticmethod
    def initialize(device=None) -> Tuple[int, int]:
        """Join the job the environment describes (``launch.ENGINE_VARIABLES``); ``(rank, world_size)``."""

    #: A Trainer whose step averages gradients and BatchNorm running statistics over the workers, as
    #: :func:`common.oracle.sharded_sgd_step` does.
    DistributedTrainer: Type[Trainer]

    @staticmethod
    def shutdown() -> None:
        """Leave the job (idempotent)."""


class Reference(Protocol):
    """``reference.py``: the chapter's own, unmodified network and step, for ``bench --reference``."""

    #: ``ReferenceTrainer(device=None, lr=0.05, precision=None)``, a :class:`Trainer`.
    ReferenceTrainer: Type[Trainer]


class Launch(Protocol):
    """``launch.py``: how the engine describes a job, for :func:`common.distributed.launch`.
    Imports no framework: the launcher runs it where the framework is absent."""

    #: The engine's name (``distributed.ENGINE`` is this one).
    ENGINE: str
    #: The environment variables that describe a job to the engine.
    ENGINE_VARIABLES: Sequence[str]
    #: The variables besides ``OMP_NUM_THREADS`` that set how many threads the framework's operators
    #: use: the launcher sets each to a worker's share of the CPUs.
    THREAD_VARIABLES: Sequence[str]

    @staticmethod
    def job_size(environ) -> int:
        """The number of workers of the job ``environ`` describes; 1 when it describes none. A
        one-line :class:`common.distributed.DistributedError` when it describes one wrongly."""

    @staticmethod
    def ports_needed(workers) -> int:
        """How many ports a job of ``workers`` on one machine listens on (the first: the coordinator's)."""

    @staticmethod
    def worker_environments(workers, host, ports) -> List[Dict[str, str]]:
        """The engine's variables for each of ``workers`` processes on ``host`` (``ports`` as many
        as :func:`ports_needed` says)."""

    @staticmethod
    def helper_processes(workers, host, port) -> List[Tuple[str, List[str], Dict[str, str]]]:
        """``(name, argv, environment)`` of each process the engine needs besides the workers
        (MXNet's scheduler and server); none for most engines."""

    @staticmethod
    def listeners_beyond_loopback(ports) -> List[Tuple[str, Optional[int]]]:
        """``(address, port)`` of each socket a job on one machine (:func:`worker_environments` on
        127.0.0.1, ``ports``) listens on beyond the loopback address, because the engine offers no
        setting to narrow it (``"*"``: every interface; a port of None: any port); empty where
        every socket listens on loopback. docs/distributed.md names them; the tests hold each job
        to exactly this."""


#: Module name -> its protocol, in the order a backend's ``__init__`` imports them.
PARTS: Dict[str, type] = {"model": Model, "data": Data, "kernels": Kernels, "train": Train,
                          "distributed": Distributed, "reference": Reference, "launch": Launch}
#: The parts that import no framework.
FRAMEWORK_FREE_PARTS = ("launch",)
#: The parts whose names the backend package itself re-exports.
EXPORTED_PARTS = ("model", "data", "train")


def members(part: str) -> List[Tuple[str, Any]]:
    """``(name, what)`` of ``part``'s contract in order: a function (its signature is the
    contract) or an annotation (``type``, ``Type[Trainer]``, or a value's type)."""
    protocol = PARTS[part]
    namespace = {**globals(), **vars(protocol)}
    found = []
    for name, value in vars(protocol).items():  # definition order: annotations and methods interleaved
        if isinstance(value, staticmethod):
            found.append((name, value.__func__))
    annotations = getattr(protocol, "__annotations__", {})
    for name, annotation in annotations.items():
        found.append((name, eval(annotation, namespace) if isinstance(annotation, str) else annotation))
    source = inspect.getsource(protocol)
    return sorted(found, key=lambda item: _position(source, item[0]))


def _position(source: str, name: str) -> int:
    for marker in (f"    def {name}(", f"    {name}:"):
        index = source.find(marker)
        if index >= 0:
            return index
    return len(source)


def _signature_problem(name: str, want: Callable, have: Callable) -> Optional[str]:
    """Why ``have``'s signature does not keep ``want``'s, or None: the contract's parameters first,
    with the same names, kinds and defaults; any more only with defaults (or ``*args``/``**kwargs``)."""
    wanted = list(inspect.signature(want).parameters.values())
    if [p.kind for p in wanted] == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
        return None  # the framework's own arguments (the chapter's signature in that framework)
    try:
        got = list(inspect.signature(have).parameters.values())
    except (TypeError, ValueError):
        return f"{name}: its signature cannot be read"
    for index, want_param in enumerate(wanted):
        if index >= len(got):
            return (f"{name}{inspect.signature(have)} lacks parameter '{want_param.name}' of "
                    f"{name}{inspect.signature(want)}")
        got_param = got[index]
        if (got_param.name, got_param.kind, got_param.default) != (want_param.name, want_param.kind,
                                                                   want_param.default):
            return (f"{name}{inspect.signature(have)}: parameter {index + 1} is '{got_param}', the contract's "
                    f"is '{want_param}' ({name}{inspect.signature(want)})")
    for extra in got[len(wanted):]:
        if extra.default is inspect.Parameter.empty and extra.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                           inspect.Parameter.VAR_KEYWORD):
            return (f"{name}{inspect.signature(have)}: parameter '{extra.name}' is not in the contract and "
                    "has no default")
    return None


def check(part: str, module) -> List[str]:
    """What ``module`` (a backend's ``part``) lacks or gets wrong of the contract, one line each;
    empty when it keeps it. Checks every name's presence and kind, every function's signature,
    every Trainer class's base and constructor, and that ``__all__`` lists the contract's names
    in the contract's order."""
    problems = []
    label = f"{module.__name__}"
    contract = members(part)
    for name, want in contract:
        if not hasattr(module, name):
            problems.append(f"{label} lacks '{name}' ({PARTS[part].__name__} in common/contract.py)")
            continue
        have = getattr(module, name)
        if inspect.isfunction(want):
            if not callable(have):
                problems.append(f"{label}.{name} is not callable")
            else:
                problem = _signature_problem(name, want, have)
                if problem:
                    problems.append(f"{label}.{problem}")
        elif want is type:
            if not inspect.isclass(have):
                problems.append(f"{label}.{name} is not a class")
        elif getattr(want, "__origin__", None) is type:  # Type[Trainer]
            if not (inspect.isclass(have) and issubclass(have, Trainer)):
                problems.append(f"{label}.{name} is not a subclass of common.contract.Trainer")
            else:
                arguments = _REFERENCE_ARGUMENTS if name == "ReferenceTrainer" else dict(net=None, **TRAINER_ARGUMENTS)
                try:
                    inspect.signature(have).bind(**arguments)
                except TypeError as error:
                    problems.append(f"{label}.{name}{inspect.signature(have)} does not take "
                                    f"{', '.join(arguments)} ({error})")
        elif name == "BLOCK_BUILDERS":
            kinds = {f"{pre}{block}" for pre in ("", "preact_") for block in BLOCK_EXPANSION}
            if not isinstance(have, Mapping) or set(have) != kinds:
                problems.append(f"{label}.BLOCK_BUILDERS must map exactly {', '.join(sorted(kinds))} to builders")
            else:
                for kind, builder in have.items():
                    problem = _signature_problem(f"BLOCK_BUILDERS[{kind!r}]", _block_builder, builder)
                    if problem:
                        problems.append(f"{label}.{problem}")
        elif isinstance(want, type) and want is not Any and not getattr(want, "_is_protocol", False):
            if not isinstance(have, want):
                problems.append(f"{label}.{name} is a {type(have).__name__}, not a {want.__name__}")
    exported = getattr(module, "__all__", None)
    if exported is None:
        problems.append(f"{label} has no __all__")
    else:
        names = [name for name, _ in contract]
        missing = [name for name in names if name not in exported]
        if missing:
            problems.append(f"{label}.__all__ lacks {', '.join(missing)}")
        elif [name for name in exported if name in names] != names:
            problems.append(f"{label}.__all__ lists the contract's names in another order than "
                            f"{PARTS[part].__name__}: {', '.join(names)}")
    return problems
