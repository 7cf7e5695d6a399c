"""Training ResNet with JAX: the :class:`Trainer` adapter and the chapter's entry points.

The loop, the metrics, the checkpoints and the timing live once in :mod:`common.training`;
this module supplies JAX's side of one step: one ``jax.jit``-compiled function that runs the
forward pass, the backward pass (``jax.value_and_grad``) and ``optax.sgd``'s update, which XLA
fuses into a few kernels. The compiled steps are module-level functions keyed by the Flax module
(its fields, its layers among them), the input shapes and ``RESNET_FAST_PATHS``'s mode (which the
fast layers read as they are traced), so every Trainer of one network shares them: JAX compiles a
step once per network and batch shape in a process.

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
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from common import autotune, contract, training
from common.backend import device_label
from common.hparams import check_precision
from common.layout import to_canonical_layout
from common.naming import trainable_parameter_names

from . import kernels
from .data import to_tensor
from .model import Network, architecture, export_weights, import_weights, resnet

__all__ = ["try_gpu", "Trainer", "loss_and_gradients", "train", "evaluate", "train_ch6"]


def try_gpu(i=0):
    """The chapter's ``try_gpu``: JAX's GPU ``i`` if it exists, else the CPU device."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this JAX
        gpus = []
    return gpus[i] if len(gpus) >= i + 1 else jax.devices("cpu")[0]


#: The chapter's optimizer: ``optax.sgd`` without momentum or weight decay, its learning rate a
#: value of the optimizer's state (``inject_hyperparams``), so changing it compiles nothing.
OPTIMIZER = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)


def _losses(logits, labels):
    # optax's softmax cross-entropy, one loss per example, in float32 whatever the network computes in.
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _correct(logits, labels):
    return jnp.sum(jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)


def _apply_train(module, params, batch_stats, x):
    logits, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"])
    return logits, updates["batch_stats"]


@partial(jax.jit, static_argnames=("module", "fast_paths_mode"))
def _train_step(module, fast_paths_mode, params, batch_stats, opt_state, x, y):
    """One SGD step of ``module`` (training mode): the new parameters, running statistics and
    optimizer state, the loss summed over the batch and the number correct."""
    def loss(params):
        logits, new_stats = _apply_train(module, params, batch_stats, x)
        losses = _losses(logits, y)
        return jnp.mean(losses), (losses, logits, new_stats)

    (_, (losses, logits, batch_stats)), gradients = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = OPTIMIZER.update(gradients, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, jnp.sum(losses), _correct(logits, y)


@partial(jax.jit, static_argnames=("module", "fast_paths_mode"))
def _eval_step(module, fast_paths_mode, variables, x, y):
    logits = module.apply(variables, x)
    return jnp.sum(_losses(logits, y)), _correct(logits, y)


@partial(jax.jit, static_argnames=("module", "fast_paths_mode"))
def _loss_and_gradients(module, fast_paths_mode, params, batch_stats, x, y):
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
    """

    backend = "jax"
    framework = f"JAX {jax.__version__}"

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True):
        self.precision, self.deterministic = check_precision(precision), bool(deterministic)
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
        self.opt_state = jax.device_put(OPTIMIZER.init(self.net.variables["params"]), self.device)
        self.lr = lr

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
        return float(self.opt_state.hyperparams["learning_rate"])

    @lr.setter
    def lr(self, value) -> None:
        self.opt_state.hyperparams["learning_rate"] = jax.device_put(jnp.asarray(value, jnp.float32), self.device)

    def to_batch(self, images, labels):
        """Device arrays from NCHW NumPy, or from arrays :mod:`resnet_jax.data` made."""
        x = jax.device_put(images, self.device) if isinstance(images, jax.Array) else to_tensor(images, self.device)
        y = jax.device_put(labels, self.device) if isinstance(labels, jax.Array) else \
            to_tensor(np.asarray(labels, dtype=np.int32), self.device)
        return x, y

    def train_step(self, x, y):
        """One SGD step; returns (summed loss, number correct) without waiting for them."""
        variables = self.net.variables
        with kernels.precision_scope(self.precision):
            params, batch_stats, self.opt_state, loss, correct = _train_step(
                self.modules[True], autotune.fast_paths_mode(), variables["params"], variables["batch_stats"],
                self.opt_state, x, y)
        self.net.variables = {**variables, "params": params, "batch_stats": batch_stats}
        return loss, correct

    def eval_step(self, x, y):
        with kernels.precision_scope(self.precision):
            return _eval_step(self.modules[False], autotune.fast_paths_mode(), self.net.variables, x, y)

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
    updates its running ones; no weights change.
    """
    x, y = to_tensor(images), to_tensor(np.asarray(labels, dtype=np.int32))
    with kernels.precision_scope("fp32"):
        loss, gradients, batch_stats = _loss_and_gradients(net.mode(True), autotune.fast_paths_mode(),
                                                           net.variables["params"], net.variables["batch_stats"], x, y)
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
