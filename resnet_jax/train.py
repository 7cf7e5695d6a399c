"""Training ResNet with JAX: the :class:`Trainer` adapter and the chapter's entry points.

The loop, the metrics, the checkpoints and the timing live once in :mod:`common.training`;
this module supplies JAX's side of one step: one ``jax.jit``-compiled function that runs the
forward pass, the backward pass (``jax.value_and_grad``) and the recipe's optax update
(:func:`make_optimizer`: ``optax.sgd`` with its schedule, momentum and weight decay), which XLA
fuses into a few kernels. The compiled steps are module-level functions keyed by the Flax module
(its fields, its layers among them), the optimizer's update function and the loss's label
smoothing, the input shapes and ``RESNET_FAST_PATHS``'s mode (which the fast layers read as they
are traced), so every Trainer of one network and recipe shares them: JAX compiles a step once per
network, recipe and batch shape in a process (once for every constant rate: the rate is a value
of the optimizer's state). On a CPU the library XLA computes the convolutions with is chosen with
the first batch (:func:`resnet_jax.kernels.choose_conv_library`: XLA's default or oneDNN, timed
once per machine, network and batch shape): each step function is jitted once per library, with
that library's compiler options, and takes the library as a static argument.

Precision (:data:`common.hparams.PRECISIONS`): fp32 traces the steps under
``jax.default_matmul_precision("highest")`` (JAX's default rounds to TF32 on Ampere and later
GPUs); tf32 keeps JAX's default; bf16 is mixed precision, Flax's way: the convolutions and the
dense layer compute in bfloat16 (``dtype=jnp.bfloat16``), the parameters stay float32
(``param_dtype``, the master weights the SGD update changes), BatchNorm's statistics and
normalisation and the loss are float32.
"""
from __future__ import annotations

import re
import time
from functools import lru_cache, partial, wraps
from typing import Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from common import autotune, contract, optim, training
from common.autotune import NATIVE
from common.backend import device_label
from common.hparams import check_precision
from common.layout import from_canonical_layout, to_canonical_layout
from common.naming import trainable_parameter_names
from common.optim import MOMENTUM_PREFIX, STEP_STATE, Recipe, Schedule, resolve_recipe

from . import kernels
from .data import to_tensor
from .model import DATA_FORMAT, Network, architecture, export_weights, import_weights, resnet

__all__ = ["try_gpu", "make_optimizer", "Trainer", "loss_and_gradients", "train", "evaluate", "train_ch6"]


def try_gpu(i=0):
    """The chapter's ``try_gpu``: JAX's GPU ``i`` if it exists, else the CPU device."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this JAX
        gpus = []
    return gpus[i] if len(gpus) >= i + 1 else jax.devices("cpu")[0]


def make_optimizer(recipe: Recipe):
    """``(optimizer, schedule)`` of ``recipe``: optax's own objects, configured to compute
    :mod:`common.optim`'s math (PyTorch's); ``schedule`` (an optax schedule: step -> rate) is None
    for a constant rate.

    The optimizer is ``optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(rate,
    momentum, nesterov))``: optax's ``trace`` is PyTorch's momentum buffer (``buf = m * buf + g``,
    Nesterov's ``g + m * buf``, the rate outside it), ``add_decayed_weights`` PyTorch's coupled L2
    on every trainable array (and nothing at all for a weight decay of 0). Its state holds the
    step counter (``count``: ``scale_by_schedule``'s, or ``inject_hyperparams``' for a constant
    rate) and the buffers (``trace``). A constant rate is a value of the state
    (``optax.inject_hyperparams``), so the Trainer's ``lr`` can set it and every rate shares one
    compiled step; a schedule is optax's: cosine ``optax.warmup_cosine_decay_schedule`` (or
    ``optax.cosine_decay_schedule`` without a warm-up), step ``optax.piecewise_constant_schedule``,
    onecycle ``optax.cosine_onecycle_schedule`` with its phases placed where PyTorch's
    ``OneCycleLR`` puts them. Every schedule has an optax object here, so none is written by hand.
    The update function is one object per recipe (without its constant rate) in a process: the
    key of the jitted steps.
    """
    schedule = recipe.schedule
    key = (None if schedule.kind == "constant" else schedule, recipe.momentum, recipe.nesterov, recipe.weight_decay)
    optimizer, lr_schedule = _optimizer(*key)
    if lr_schedule is None:  # the recipe's rate in the state from the start (the update is shared)
        init = optimizer.init
        optimizer = optimizer._replace(init=lambda params: optax.tree.set(
            init(params), learning_rate=jnp.asarray(schedule.lr, jnp.float32)))
    return optimizer, lr_schedule


def _sgd(learning_rate, momentum, nesterov, weight_decay):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


@lru_cache(maxsize=None)
def _optimizer(schedule: Optional[Schedule], momentum: float, nesterov: bool, weight_decay: float):
    """make_optimizer's objects, once per recipe in a process (``schedule`` None: a constant rate)."""
    if schedule is None:
        optimizer = optax.inject_hyperparams(_sgd, static_args=("momentum", "nesterov", "weight_decay"))(
            learning_rate=1.0, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        return optimizer, None
    lr_schedule = _lr_schedule(schedule)
    return _sgd(lr_schedule, momentum, nesterov, weight_decay), lr_schedule


def _lr_schedule(schedule: Schedule):
    """The optax schedule whose rate at step ``k`` is ``schedule.lr_at(k)`` (in float32)."""
    lr, total, warmup = schedule.lr, schedule.total_steps, schedule.warmup_steps
    if schedule.kind == "step":
        # Scales from count == milestone on (its indicator is sign(milestone - count) > 0): MultiStepLR's.
        return optax.piecewise_constant_schedule(lr, {m: schedule.gamma for m in schedule.milestones})
    if schedule.kind == "cosine":
        if not warmup:
            return optax.cosine_decay_schedule(lr, decay_steps=total, alpha=0.0)
        # decay_steps counts the warm-up too: the cosine runs over total - warmup steps, CosineAnnealingLR's T_max.
        return optax.warmup_cosine_decay_schedule(optim.WARMUP_START_FACTOR * lr, lr, warmup, decay_steps=total,
                                                  end_value=0.0)
    # OneCycleLR ends its rise at step warmup and its fall at step total - 1; optax's phases end at
    # int(pct_start * transition_steps) and transition_steps: so transition_steps = total - 1, and
    # a pct_start half a step past warmup (int() truncates) puts the peak exactly on step warmup.
    return optax.cosine_onecycle_schedule(total - 1, lr, pct_start=(warmup + 0.5) / (total - 1),
                                          div_factor=optim.ONECYCLE_DIV_FACTOR,
                                          final_div_factor=optim.ONECYCLE_FINAL_DIV_FACTOR)


def _losses(logits, labels, label_smoothing: float = 0.0):
    """optax's softmax cross-entropy, one loss per example, in float32 whatever the network
    computes in; with ``label_smoothing``, against ``optax.smooth_labels``' targets (PyTorch's)."""
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _correct(logits, labels):
    return jnp.sum(jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)


def _apply_train(module, params, batch_stats, x):
    logits, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"])
    return logits, updates["batch_stats"]


def update(optimizer_update, params, gradients, opt_state):
    """The optimizer's step (its schedule's included) with ``gradients``: the new parameters and
    optimizer state. Traced inside the jitted steps (this one's and the data-parallel one's)."""
    updates, opt_state = optimizer_update(gradients, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _jit_per_library(*static_argnames):
    """A decorator: ``function`` (whose third argument is the library, ``conv_library``) jitted once
    per :data:`resnet_jax.kernels.CONV_LIBRARIES` library, with its compiler options and
    ``static_argnames``, traced in its :func:`resnet_jax.kernels.conv_library_scope`; calling the
    result runs the library's own."""
    def decorate(function):
        @wraps(function)
        def traced(module, fast_paths_mode, conv_library, *args):
            with kernels.conv_library_scope(conv_library):
                return function(module, fast_paths_mode, conv_library, *args)

        jitted = {library: jax.jit(traced, static_argnames=static_argnames,
                                   compiler_options=kernels.compiler_options(library))
                  for library in kernels.CONV_LIBRARIES}

        @wraps(function)
        def run(module, fast_paths_mode, conv_library, *args):
            return jitted[conv_library](module, fast_paths_mode, conv_library, *args)
        return run
    return decorate


@_jit_per_library("module", "fast_paths_mode", "conv_library", "optimizer_update", "label_smoothing")
def _train_step(module, fast_paths_mode, conv_library, optimizer_update, label_smoothing, params, batch_stats,
                opt_state, x, y):
    """One optimizer step of ``module`` (training mode): the new parameters, running statistics and
    optimizer state, the loss (label smoothing included) summed over the batch and the number correct."""
    def loss(params):
        logits, new_stats = _apply_train(module, params, batch_stats, x)
        losses = _losses(logits, y, label_smoothing)
        return jnp.mean(losses), (losses, logits, new_stats)

    (_, (losses, logits, batch_stats)), gradients = jax.value_and_grad(loss, has_aux=True)(params)
    params, opt_state = update(optimizer_update, params, gradients, opt_state)
    return params, batch_stats, opt_state, jnp.sum(losses), _correct(logits, y)


#: The width axis of a batch (the mirror image of a test view flips it).
_WIDTH_AXIS = DATA_FORMAT.index("W")


@_jit_per_library("module", "fast_paths_mode", "conv_library", "tta")
def _eval_step(module, fast_paths_mode, conv_library, tta, variables, x, y):
    logits = module.apply(variables, x).astype(jnp.float32)
    if tta == "flip":
        logits = (logits + module.apply(variables, jnp.flip(x, axis=_WIDTH_AXIS)).astype(jnp.float32)) / 2
    return jnp.sum(_losses(logits, y)), _correct(logits, y)


@_jit_per_library("module", "fast_paths_mode", "conv_library")
def _loss_and_gradients(module, fast_paths_mode, conv_library, params, batch_stats, x, y):
    def loss(params):
        logits, new_stats = _apply_train(module, params, batch_stats, x)
        return jnp.mean(_losses(logits, y)), new_stats
    (value, batch_stats), gradients = jax.value_and_grad(loss, has_aux=True)(params)
    return value, gradients, batch_stats


class Trainer(contract.Trainer):
    """JAX's side of :func:`common.training.fit` (the contract: :class:`common.contract.Trainer`).

    ``net`` may be a :class:`resnet_jax.model.Network` or, as in the chapter's ``train_ch6``, a
    function that builds one. The trainer keeps the network's variables up to date in
    ``net.variables`` after every step (JAX's arrays are immutable: each step makes new ones).

    ``precision``: see the module docstring; a network the Trainer builds for bf16 has plain
    layers. ``deterministic``: XLA's deterministic GPU kernels are switched on for the whole
    process when :mod:`resnet_jax` is imported (``--xla_gpu_deterministic_ops=true`` in
    ``XLA_FLAGS``, read once as JAX starts); ``deterministic=False`` takes effect only where
    ``XLA_FLAGS`` set ``--xla_gpu_deterministic_ops=false`` before that. A CPU run is
    deterministic either way.

    ``recipe`` (:class:`common.optim.Recipe`; None: the chapter's plain SGD at ``lr``): the
    optimizer and schedule of :func:`make_optimizer`, whose state is ``opt_state``; the training
    loss's label smoothing; the evaluation's views (``tta="flip"``: the mean of the logits of the
    batch and of its mirror image).

    ``conv_library``: the library XLA computes the convolutions with (a key of
    :data:`resnet_jax.kernels.CONV_LIBRARIES`), chosen on the first training batch
    (:func:`resnet_jax.kernels.choose_conv_library`, on a CPU; NATIVE elsewhere) and kept; None
    until then (evaluation before it compiles with XLA's default).
    """

    backend = "jax"
    framework = f"JAX {jax.__version__}"

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True, recipe=None):
        self.precision, self.deterministic = check_precision(precision), bool(deterministic)
        self.recipe = resolve_recipe(lr, recipe)
        self.device = self.resolve_device(device)
        self.device_name = device_label("cpu" if self.device.platform == "cpu" else "gpu", self.device.id)
        dtype = jnp.bfloat16 if self.precision == "bf16" else None
        if net is None:
            net = resnet(arch, num_classes, in_channels, style, plain=True if dtype is not None else None, dtype=dtype)
        elif callable(net) and not isinstance(net, Network):
            net = net()  # the chapter passes a function that builds the network
        if not isinstance(net, Network):
            raise TypeError(f"net must be a resnet_jax Network or a function that builds one, got {type(net).__name__}")
        self.net = net
        self.modules = {training: net.mode(training) for training in (True, False)}
        if dtype is not None:
            if "dtype" not in getattr(net.module, "__dataclass_fields__", {}):
                raise ValueError(f"precision bf16 needs a module with a dtype field (resnet()'s ResNet); "
                                 f"{type(net.module).__name__} has none")
            self.modules = {training: module.clone(dtype=dtype) for training, module in self.modules.items()}
        self._place()
        self.conv_library = None
        self.optimizer, self.schedule = make_optimizer(self.recipe)
        self.opt_state = jax.device_put(self.optimizer.init(self.net.variables["params"]), self.device)

    @staticmethod
    def resolve_device(device):
        """A ``jax.Device`` from None (a GPU if JAX sees one), a device, "cpu", "gpu", "gpu:1" or "cuda:0"."""
        if device is None:
            return try_gpu()
        if isinstance(device, jax.Device):
            return device
        match = re.fullmatch(r"(cpu|gpu|cuda)(?::(\d+))?", str(device).strip().lower())
        if match is None:
            raise ValueError(f"device must be None, 'cpu', 'gpu:N' ('cuda:N') or a jax.Device, got {device!r}")
        if match.group(1) == "cpu":
            return jax.devices("cpu")[0]
        index = int(match.group(2) or 0)
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if index >= len(gpus):
            raise ValueError(f"device {device!r} is not available: JAX sees {len(gpus)} GPU(s); use --device cpu")
        return gpus[index]

    def _place(self):
        self.net.variables = jax.device_put(self.net.variables, self.device)

    @property
    def lr(self) -> float:
        """The rate of the next step: the constant rate, or the schedule's at the state's step count."""
        if self.schedule is None:
            return float(self.opt_state.hyperparams["learning_rate"])
        return float(self.schedule(optax.tree.get(self.opt_state, "count")))

    @lr.setter
    def lr(self, value) -> None:
        if self.schedule is not None:
            raise ValueError(f"the rate follows the recipe's {self.recipe.schedule.kind} schedule; only a constant "
                             f"rate can be set")
        self.opt_state.hyperparams["learning_rate"] = jax.device_put(jnp.asarray(value, jnp.float32), self.device)

    def to_batch(self, images, labels):
        """Device arrays from NCHW NumPy, or from arrays :mod:`resnet_jax.data` made."""
        x = jax.device_put(images, self.device) if isinstance(images, jax.Array) else to_tensor(images, self.device)
        y = jax.device_put(labels, self.device) if isinstance(labels, jax.Array) else \
            to_tensor(np.asarray(labels, dtype=np.int32), self.device)
        return x, y

    def train_step(self, x, y):
        """One optimizer step (:func:`update`, inside the jitted step); returns (summed loss, number
        correct) without waiting for them. The first one chooses :attr:`conv_library`."""
        if self.conv_library is None:
            self.conv_library = kernels.choose_conv_library(
                self.architecture()[0].label, x.shape, self.precision, self.device.platform,
                lambda library: self._timed_step(library, x, y))
        variables = self.net.variables
        with kernels.precision_scope(self.precision):
            params, batch_stats, self.opt_state, loss, correct = self._step(self.conv_library, x, y)
        self.net.variables = {**variables, "params": params, "batch_stats": batch_stats}
        return loss, correct

    def _step(self, library, x, y):
        variables = self.net.variables
        return _train_step(self.modules[True], autotune.fast_paths_mode(), library, self.optimizer.update,
                           self.recipe.label_smoothing, variables["params"], variables["batch_stats"], self.opt_state,
                           x, y)

    def _timed_step(self, library, x, y):
        """A callable that runs one training step compiled for ``library`` on this batch and waits for
        it, changing nothing (what :func:`resnet_jax.kernels.choose_conv_library` times)."""
        def run():
            with kernels.precision_scope(self.precision):
                jax.block_until_ready(self._step(library, x, y))
        return run

    def eval_step(self, x, y):
        """(summed loss, number correct) in evaluation mode; with the recipe's ``tta="flip"`` the
        logits are the mean of the batch's and its mirror image's (flipped along the width axis)."""
        with kernels.precision_scope(self.precision):
            return _eval_step(self.modules[False], autotune.fast_paths_mode(), self.conv_library or NATIVE,
                              self.recipe.tta, self.net.variables, x, y)

    def _trainable_paths(self) -> Dict[str, tuple]:
        """Canonical name -> the path of each trainable array in ``params`` (and in the momentum trace)."""
        return {name: self.net.layout[name][1] for name in trainable_parameter_names(*self.architecture())}

    def export_optimizer_state(self) -> Dict[str, np.ndarray]:
        """``step`` (the state's count) and, with momentum, each array's ``momentum_buffer``: optax's
        trace, PyTorch's buffer already (the rate outside it), in canonical layout and float64."""
        state = {STEP_STATE: np.int64(optax.tree.get(self.opt_state, "count"))}
        if self.recipe.momentum:
            trace = flatten_dict(jax.device_get(optax.tree.get(self.opt_state, "trace")))
            for name, path in self._trainable_paths().items():
                state[MOMENTUM_PREFIX + name] = to_canonical_layout(trace[path]).astype(np.float64)
        return state

    def import_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """A fresh optimizer state at step ``state["step"]`` (where the schedule stands: its count)
        with the given momentum buffers (zeros where absent) as optax's trace; a constant rate
        stays what it is."""
        fresh = self.optimizer.init(self.net.variables["params"])
        changes = {"count": jnp.asarray(int(state[STEP_STATE]), jnp.int32)}
        if self.schedule is None:
            changes["learning_rate"] = self.opt_state.hyperparams["learning_rate"]
        if self.recipe.momentum:
            trace = flatten_dict(optax.tree.get(fresh, "trace"))
            for name, path in self._trainable_paths().items():
                given = state.get(MOMENTUM_PREFIX + name)
                if given is None:
                    continue
                buffer = from_canonical_layout(given)  # float32: the float64 of a float32 buffer, exactly
                if buffer.shape != trace[path].shape:
                    want = to_canonical_layout(np.zeros(trace[path].shape, np.float32)).shape
                    raise ValueError(f"{MOMENTUM_PREFIX + name} has shape {np.shape(given)}; the network's {name} "
                                     f"has {want}")
                trace[path] = jnp.asarray(buffer)
            changes["trace"] = unflatten_dict(trace)
        for key, value in changes.items():  # one at a time: tree.set misses a key below a node that holds another
            fresh = optax.tree.set(fresh, **{key: value})
        self.opt_state = jax.device_put(fresh, self.device)

    def to_host(self, values):
        """Python floats of step results: the one place that waits for the device."""
        return [float(v) for v in jax.device_get(list(values))]

    def export_weights(self):
        return export_weights(self.net)

    def import_weights(self, weights):
        import_weights(self.net, weights)
        self._place()

    def architecture(self):
        return architecture(self.net)

    def matmul_gflops(self, size: int = 2048, repeats: int = 5) -> float:
        """JAX's own fp32 ``size x size`` matrix multiply on the device, in GFLOP/s (bench's peak)."""
        rng = np.random.default_rng(0)
        a, b = (jax.device_put(rng.uniform(size=(size, size)).astype(np.float32), self.device) for _ in range(2))
        matmul = jax.jit(partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST))
        matmul(a, b).block_until_ready()  # compile, warm up, and wait for it
        start = time.perf_counter()
        for _ in range(repeats):
            c = matmul(a, b)
        c.block_until_ready()
        return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9

    def peak_memory_bytes(self):
        """Peak device memory on a GPU; ``None`` on the CPU (bench then reports the process's)."""
        if self.device.platform != "cpu":
            return (self.device.memory_stats() or {}).get("peak_bytes_in_use")
        return None


def loss_and_gradients(net, images, labels):
    """Mean cross-entropy and canonical name -> gradient (canonical layout), train mode.

    Like one training forward and backward pass: BatchNorm uses batch statistics and
    updates its running ones; no weights change. The convolutions' library is chosen as a
    Trainer's is (:func:`resnet_jax.kernels.choose_conv_library`: oneDNN in fast mode on a CPU).
    """
    x, y = to_tensor(images), to_tensor(np.asarray(labels, dtype=np.int32))
    module, mode = net.mode(True), autotune.fast_paths_mode()

    def run(library):
        with kernels.precision_scope("fp32"):
            return _loss_and_gradients(module, mode, library, net.variables["params"], net.variables["batch_stats"],
                                       x, y)
    library = kernels.choose_conv_library(architecture(net)[0].label, x.shape, "fp32", x.devices().pop().platform,
                                          lambda library: lambda: jax.block_until_ready(run(library)))
    loss, gradients, batch_stats = run(library)
    net.variables = {**net.variables, "batch_stats": batch_stats}
    gradients = flatten_dict(gradients)
    return float(loss), {name: to_canonical_layout(gradients[net.layout[name][1]])
                         for name in trainable_parameter_names(*architecture(net))}


def train(**kwargs):
    """:func:`common.training.train` with this backend."""
    return training.train(Trainer, **kwargs)


def evaluate(**kwargs):
    """:func:`common.training.evaluate` with this backend."""
    return training.evaluate(Trainer, **kwargs)


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None):
    """The chapter's ``train_ch6`` (:func:`common.training.train_ch6` with this backend): ``net``
    is a network or a function that builds one."""
    return training.train_ch6(Trainer, net, train_iter, test_iter, num_epochs, lr, device)
