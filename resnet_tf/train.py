"""Training ResNet with TensorFlow: the :class:`Trainer` adapter and the chapter's entry points.

The loop, the metrics, the checkpoints and the timing live once in :mod:`common.training`;
this module supplies TensorFlow's side of one step. The recipe (:mod:`common.optim`: momentum,
weight decay, the learning-rate schedule, label smoothing, flipped test views) runs on Keras'
own SGD, schedules and loss (:func:`make_optimizer`, :meth:`Trainer.update`). Steps are ``tf.function`` graphs, compiled
with XLA (which fuses each convolution's bias add, BatchNorm, ReLU and residual add into a few
kernels) or run by TensorFlow's graph executor (oneDNN's kernels, BatchNorm fused), whichever
:mod:`common.autotune` measures faster for the network on this machine.

Precision (:data:`common.hparams.PRECISIONS`) is set through TensorFlow's and Keras' own switches:
``tf.config.experimental.enable_tensor_float_32_execution`` for TF32 and Keras' ``mixed_bfloat16``
dtype policy, set on each layer of the network trained (no process-wide policy), for bf16.
"""
from __future__ import annotations

import math
import re
import time
from typing import Dict, Mapping

import keras
import numpy as np
import tensorflow as tf

from common import autotune, contract, training
from common.backend import device_label
from common.hparams import check_precision
from common.layout import from_canonical_layout, to_canonical_layout
from common.naming import trainable_parameter_names
from common.optim import (
    MOMENTUM_PREFIX,
    ONECYCLE_DIV_FACTOR,
    ONECYCLE_FINAL_DIV_FACTOR,
    STEP_STATE,
    WARMUP_START_FACTOR,
    Recipe,
    resolve_recipe,
)

from . import kernels
from .data import to_tensor
from .model import DATA_FORMAT, architecture, canonical_variables, export_weights, import_weights, resnet

__all__ = ["try_gpu", "set_precision", "make_optimizer", "OneCycle", "Trainer", "loss_and_gradients", "train",
           "evaluate", "train_ch6"]

#: Keras' dtype policy of each precision: bf16 is Keras' mixed precision (bfloat16 computation,
#: float32 variables); TF32 is no dtype but a switch of TensorFlow's GPU kernels.
DTYPE_POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16"}
#: TensorFlow's own TF32 setting before this package changed it (on: TensorFlow runs float32
#: convolutions and matmuls on Ampere and later GPUs in TF32 by default).
TF32_DEFAULT = tf.config.experimental.tensor_float_32_execution_enabled()


def try_gpu(i=0):
    """The chapter's ``try_gpu``: ``tf.device('/GPU:i')`` if that GPU exists, else the CPU."""
    if len(tf.config.list_physical_devices("GPU")) >= i + 1:
        return tf.device(f"/GPU:{i}")
    return tf.device("/CPU:0")


def _cross_entropy(logits, labels):
    # TensorFlow's own fused softmax cross-entropy, one loss per example, in float32 whatever
    # the network computes in (bfloat16 logits are cast up; float32 ones are left as they are).
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))


def use_dtype_policy(net, policy):
    """Set Keras' dtype ``policy`` ("float32", "mixed_bfloat16") on every layer of ``net``, the
    network itself included: Keras' mixed precision per layer, not the process-wide
    ``keras.config.set_dtype_policy``. Under a mixed policy the variables stay float32 (the
    master weights) and each layer casts its inputs and weights to bfloat16 as it computes;
    :class:`resnet_tf.kernels.BatchNorm` and Keras' BatchNormalization compute in float32."""
    for layer in kernels._sublayers(net):
        if layer.dtype_policy.name != policy:
            layer.dtype_policy = policy
    return net


def use_tf32(enabled: bool) -> None:
    """TensorFlow's TF32 switch for float32 convolutions and matmuls on GPUs (Ampere and later):
    process-wide, so each trainer sets it before each step it runs; CPUs compute float32 either way."""
    if tf.config.experimental.tensor_float_32_execution_enabled() != enabled:
        tf.config.experimental.enable_tensor_float_32_execution(enabled)


def use_op_determinism(device: str) -> None:
    """Turn on ``tf.config.experimental.enable_op_determinism()`` where ``device`` ("/GPU:0", ...) needs
    it. On a GPU: deterministic cuDNN and XLA algorithms, no atomics.
    On the CPU it is left off: TensorFlow's CPU kernels and XLA's already give bit-identical reruns
    here (``tests/test_training.py``'s resume equality), and the switch would only add its costs.

    The switch cannot be turned off again (TensorFlow has no public way): from then on the whole
    process runs deterministic kernels, a trainer with ``deterministic=False`` included, and random
    ops without a seed (``tf.random.normal(shape)`` with no ``tf.random.set_seed``) raise."""
    if device.startswith("/GPU"):
        tf.config.experimental.enable_op_determinism()


def _correct(logits, labels):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=labels.dtype), labels), tf.float32))


def set_precision(precision: str = "fp32", deterministic: bool = True, device=None) -> None:
    """TensorFlow's process-wide switches for :data:`common.hparams.PRECISIONS` and determinism:
    TF32 on for ``tf32`` only (:func:`use_tf32`), and op determinism where ``deterministic`` and
    ``device`` ("/GPU:0", ...) is a GPU (:func:`use_op_determinism`). bf16 is no switch but a
    property of the network (:func:`use_dtype_policy`)."""
    check_precision(precision)
    if deterministic and device is not None:
        use_op_determinism(device)
    use_tf32(precision == "tf32")


def make_optimizer(recipe: Recipe):
    """``(optimizer, schedule)`` of ``recipe``: ``keras.optimizers.SGD`` and Keras' own learning-rate
    schedules, whose math :mod:`common.optim` writes down (``schedule`` is None for a constant rate,
    which stays Keras' settable rate variable).

    cosine: ``CosineDecay`` (its linear warm-up from ``WARMUP_START_FACTOR * lr`` to ``lr`` is
    ``LinearLR``'s, its decay over ``total - warmup`` steps to ``alpha=0`` ``CosineAnnealingLR``'s);
    step: ``PiecewiseConstantDecay``; onecycle: :class:`OneCycle`, a ``LearningRateSchedule`` of
    this module's, as Keras has no one-cycle schedule. The optimizer's ``iterations`` is the step
    counter its schedule reads: nothing to step by hand.

    Two conventions differ from PyTorch's, and the Trainer's :meth:`Trainer.update` bridges them:
    Keras' ``weight_decay`` is decoupled (``w -= lr * wd * w``), so it stays unset and the update
    adds ``wd * w`` to the gradients (PyTorch's L2); Keras' SGD keeps ``v = m * v - lr * g`` (the
    rate inside the momentum), so the update rescales ``v`` by ``lr_k / lr_(k-1)`` before step k.
    """
    schedule = recipe.schedule
    # float64 rates (Keras' schedules compute in their initial rate's dtype): exact ratios, and a
    # cosine's last rates stay above zero where float32's cos(~pi) rounds to -1.
    lr = np.float64(schedule.lr)
    if schedule.kind == "constant":
        rate = None
    elif schedule.kind == "step":
        if schedule.milestones:
            # Keras' value i holds for boundary[i-1] < step <= boundary[i]; PyTorch's rate changes AT a milestone.
            rate = keras.optimizers.schedules.PiecewiseConstantDecay(
                [m - 1 for m in schedule.milestones],
                [lr * np.float64(schedule.gamma) ** i for i in range(len(schedule.milestones) + 1)])
        else:
            rate = None  # no milestone: a constant rate (PiecewiseConstantDecay needs a boundary)
    elif schedule.kind == "onecycle":
        rate = OneCycle(schedule.lr, schedule.total_steps, schedule.warmup_steps)
    elif schedule.warmup_steps:
        # Keras' warm-up goes linearly from initial_learning_rate to warmup_target, then decays from warmup_target.
        warmup = schedule.warmup_steps
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=np.float64(WARMUP_START_FACTOR) * lr, decay_steps=schedule.total_steps - warmup,
            alpha=0.0, warmup_target=lr, warmup_steps=warmup)
    else:
        rate = keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=schedule.total_steps,
                                                      alpha=0.0)
    optimizer = keras.optimizers.SGD(learning_rate=float(schedule.lr) if rate is None else rate,
                                     momentum=float(recipe.momentum), nesterov=recipe.nesterov)
    return optimizer, rate


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """PyTorch's ``OneCycleLR(max_lr=lr, total_steps=total_steps, anneal_strategy="cos")`` with its
    peak on step ``warmup_steps`` (:meth:`common.optim.Schedule.lr_at`'s closed form in TensorFlow's
    ops, float64): cosine up from ``lr / 25`` to ``lr``, then down to ``lr / 25e4``. Keras has no
    one-cycle schedule."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int, name: str = "OneCycle"):
        super().__init__()
        self.lr, self.total_steps, self.warmup_steps, self.name = float(lr), int(total_steps), int(warmup_steps), name

    def __call__(self, step):
        with tf.name_scope(self.name):
            k = tf.cast(step, tf.float64)
            w, last = float(self.warmup_steps), float(self.total_steps - 1)
            peak = tf.constant(self.lr, tf.float64)
            initial = peak / ONECYCLE_DIV_FACTOR
            rising = k <= w
            start = tf.where(rising, initial, peak)
            end = tf.where(rising, peak, initial / ONECYCLE_FINAL_DIV_FACTOR)
            pct = tf.where(rising, k / w, (k - w) / (last - w))
            return end + (start - end) / 2.0 * (tf.cos(math.pi * pct) + 1.0)

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "name": self.name}


def _smoothed_cross_entropy(label_smoothing: float):
    """Keras' softmax cross-entropy with PyTorch's label smoothing (targets ``(1 - eps) * one_hot +
    eps / classes``), one loss per example, in float32."""
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def smoothed(logits, labels):
        logits = tf.cast(logits, tf.float32)
        return loss(tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float32), logits)
    return smoothed


class Trainer(contract.Trainer):
    """TensorFlow's side of :func:`common.training.fit` (the contract: :class:`common.contract.Trainer`).

    ``net`` may be a built network (a :class:`resnet_tf.model.ResNet` or the chapter's
    Sequential) or, as in the chapter's TensorFlow ``train_ch6``, a function that builds one.

    ``precision`` (:data:`common.hparams.PRECISIONS`):

    * ``"fp32"`` (the default): float32 throughout, exact; TF32 off on a GPU
      (TensorFlow's default is on).
    * ``"tf32"``: TensorFlow's TF32 on for convolutions and matmuls on GPUs that have it (Ampere
      and later). CPUs have no TF32: there it computes exactly as ``"fp32"``.
    * ``"bf16"``: Keras' mixed precision: the ``mixed_bfloat16`` dtype policy on every layer
      (:func:`use_dtype_policy`; a network passed in gets it too, in place). Convolutions, the
      dense layer, ReLU, pooling and the residual additions compute in bfloat16; the variables
      (master weights) stay float32, as do BatchNorm's statistics, normalisation and running
      statistics, the loss and its gradient's update; :meth:`export_weights` is float32. No loss
      scaling: bfloat16 has float32's range. The fast paths (:mod:`resnet_tf.kernels`) stay
      in: they compute in bfloat16 as well, and autotuning measures them, and the choice between
      XLA and the graph executor, apart from fp32's.

    The TF32 switch and Keras' layer policies are set here and the TF32 switch again before each
    step, so trainers of different precisions can share a process.

    ``recipe`` (:class:`common.optim.Recipe`; None: the chapter's plain SGD at ``lr``): Keras' SGD
    and schedule (:func:`make_optimizer`), updated by :meth:`update`; label smoothing through
    Keras' ``CategoricalCrossentropy`` in training only; ``tta="flip"`` in :meth:`eval_step`.
    The optimizer's state is exported and imported in PyTorch's convention (``step``,
    ``momentum_buffer.<name>``), so a run resumes in any backend. ``lr`` is the rate of the next
    step; it can be set for a constant rate only.

    ``deterministic`` (the default): bit-identical reruns, so a resumed run equals the
    uninterrupted one, on a GPU through ``tf.config.experimental.enable_op_determinism()``
    (:func:`use_op_determinism`: process-wide and permanent; deterministic cuDNN algorithms
    instead of the fastest autotuned ones, no atomic accumulation: slower by an amount not
    measured here, as no GPU build of TensorFlow was at hand). On the CPU nothing is switched:
    its kernels are deterministic already. ``deterministic=False`` leaves TensorFlow's defaults
    (cuDNN autotuning, atomics): the GPU's fastest kernels, but reruns differ in the last bits
    and drift apart over epochs, so a resumed run is not the uninterrupted one; unless an
    earlier trainer of the process already turned determinism on, which stays on.
    """

    backend = "tf"
    framework = f"TensorFlow {tf.__version__}"
    #: The Keras learning-rate schedule of the recipe (:func:`make_optimizer`); None: a constant rate.
    schedule = None

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True, recipe=None):
        self.precision = check_precision(precision)
        self.deterministic = bool(deterministic)
        self.recipe = resolve_recipe(lr, recipe)
        self.device = self.resolve_device(device)
        kind, index = self.device[1:].split(":")
        self.device_name = device_label("cpu" if kind == "CPU" else "gpu", int(index))
        set_precision(self.precision, self.deterministic, self.device)
        with tf.device(self.device):
            if net is None:
                net = resnet(arch, num_classes=num_classes, in_channels=in_channels, style=style)
            elif callable(net) and not isinstance(net, keras.layers.Layer):
                net = net()  # the chapter passes a function that builds the network
            if not net.built:
                net.build((None, None, None, in_channels))
            self.net = use_dtype_policy(net, DTYPE_POLICIES[self.precision])
            self.optimizer, self.schedule = make_optimizer(self.recipe)
            self.optimizer.build(net.trainable_variables)
        # The mean over the batch is taken in the step; the recipe's smoothing in training only.
        label_smoothing = self.recipe.label_smoothing
        self.loss = _smoothed_cross_entropy(label_smoothing) if label_smoothing else _cross_entropy
        self.eval_loss = _cross_entropy
        self._compiled = {}  # (compiler, train?) -> the step as a tf.function
        self.compiler = None  # "xla" or "graph", chosen at the first step (see _step)

    @staticmethod
    def resolve_device(device) -> str:
        """"/GPU:i" or "/CPU:0" from None (a GPU if TensorFlow sees one), "cpu", "gpu:1", "cuda:0",
        "/GPU:0" or the chapter's ``tf.device(...)``."""
        if device is None:
            device = try_gpu()
        name = getattr(device, "_device_name", device)
        match = re.search(r"(cpu|gpu|cuda)(?::(\d+))?$", name.lower()) if isinstance(name, str) else None
        if match is None:
            raise ValueError(f"device must be None, 'cpu', 'gpu:N' ('/GPU:N', 'cuda:N') or tf.device(...), "
                             f"got {device!r}")
        if match.group(1) == "cpu":
            return "/CPU:0"
        return f"/GPU:{int(match.group(2) or 0)}"

    @property
    def steps(self) -> int:
        """Optimizer steps taken: Keras' ``iterations``, the counter the schedule reads."""
        return int(self.optimizer.iterations.numpy())

    @property
    def lr(self) -> float:
        """The rate of the next step (Keras evaluates the schedule at ``iterations``)."""
        return float(self.optimizer.learning_rate.numpy())

    @lr.setter
    def lr(self, value) -> None:
        if self.schedule is not None:
            raise ValueError(f"the learning rate follows the {self.recipe.schedule.kind} schedule; it cannot be set")
        old = self.lr
        self.optimizer.learning_rate = float(value)  # assigns the variable: no retracing
        slots = getattr(self.optimizer, "momentums", None)  # (none before a ReferenceTrainer's first step)
        if slots and self.lr != old:  # v = -lr * buf: the next step meets PyTorch's buf with the new rate
            factor = np.float32(self.lr / old)
            for slot in slots:
                slot.assign(slot * factor)

    def _train(self, x, y):
        variables = self.net.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.net(x, training=True)
            losses = self.loss(logits, y)
            loss = tf.reduce_mean(losses)
        self.update(tape.gradient(loss, variables), variables)
        return tf.reduce_sum(losses), _correct(logits, y)

    def update(self, gradients, variables) -> None:
        """The optimizer's step with ``gradients`` (inside the compiled step), which advances
        ``iterations`` and with it the schedule. PyTorch's coupled weight decay is added to the
        gradients (Keras' own is decoupled); Keras' momentum ``v = m * v - lr * g`` holds the rate,
        so with a schedule ``v`` is first rescaled by ``lr_k / lr_(k-1)``: then ``v = -lr_k * buf``
        and the step is PyTorch's (:mod:`common.optim`). The chapter's recipe adds nothing."""
        decay = self.recipe.weight_decay
        if decay:
            gradients = [g + tf.cast(decay, g.dtype) * tf.cast(w, g.dtype) for g, w in zip(gradients, variables)]
        if self.optimizer.momentums and self.schedule is not None:
            step = self.optimizer.iterations
            ratio = self.schedule(step) / self.schedule(tf.maximum(step - 1, 0))  # 1 at step 0
            for slot in self.optimizer.momentums:
                slot.assign(slot * tf.cast(ratio, slot.dtype))
        self._apply(gradients, variables)

    def _apply(self, gradients, variables) -> None:
        self.optimizer.apply(gradients, variables)

    def _eval(self, x, y):
        logits = self.net(x, training=False)
        if self.recipe.tta == "flip":  # the mean of the logits of x and of x mirrored along the width axis
            flipped = self.net(tf.reverse(x, axis=[DATA_FORMAT.index("W")]), training=False)
            logits = (tf.cast(logits, tf.float32) + tf.cast(flipped, tf.float32)) / 2
        return tf.reduce_sum(self.eval_loss(logits, y)), _correct(logits, y)

    def to_batch(self, images, labels):
        """Device tensors from NCHW NumPy, or from tensors :mod:`resnet_tf.data` made."""
        with tf.device(self.device):
            x = images if tf.is_tensor(images) else to_tensor(images, self.device)
            y = labels if tf.is_tensor(labels) else to_tensor(np.asarray(labels, dtype=np.int64), self.device)
        return x, y

    def _function(self, compiler, training):
        key = (compiler, training)
        if key not in self._compiled:
            # reduce_retracing: the last, smaller batch of an epoch reuses the traced graph.
            self._compiled[key] = tf.function(self._train if training else self._eval,
                                              jit_compile=compiler == "xla", reduce_retracing=True)
        return self._compiled[key]

    def _choose_compiler(self, x, y, training):
        """XLA or TensorFlow's graph executor for the steps, whichever runs this network's step
        faster on this machine (:func:`common.autotune.choose`; XLA is the fast path). Measuring
        a training step trains: the network and optimizer are put back as they were."""
        site = f"{'train' if training else 'eval'} step {architecture(self.net)[0].label} on {tuple(x.shape)}"
        if self.precision == "bf16":
            site += " bf16"
        state = [variable.numpy() for variable in self.net.variables + self.optimizer.variables]

        def make_run(path):
            compiler = "graph" if path == autotune.NATIVE else path

            def run():
                with kernels.tracing(compiler, int(x.shape[0])):
                    self.to_host(list(self._function(compiler, training)(x, y)))
            return run
        try:
            return autotune.choose(kernels.FRAMEWORK, site, ["xla", autotune.NATIVE], make_run)
        finally:
            for variable, value in zip(self.net.variables + self.optimizer.variables, state):
                variable.assign(value)

    def _step(self, x, y, training):
        use_tf32(self.precision == "tf32")  # process-wide: another trainer may have changed it
        with tf.device(self.device):
            if self.compiler is None:
                chosen = self._choose_compiler(x, y, training)
                self.compiler = "graph" if chosen == autotune.NATIVE else chosen
            with kernels.tracing(self.compiler, int(x.shape[0])):
                return self._function(self.compiler, training)(x, y)

    def train_step(self, x, y):
        """One SGD step; returns (summed loss, number correct) without waiting for them."""
        return self._step(x, y, True)

    def eval_step(self, x, y):
        return self._step(x, y, False)

    def _momentums(self) -> Dict[str, keras.Variable]:
        """Canonical name -> Keras' momentum slot ``v`` of that trainable array (its layout), in spec order."""
        index = {id(variable): i for i, variable in enumerate(self.net.trainable_variables)}  # the optimizer's order
        variables = canonical_variables(self.net)
        return {name: self.optimizer.momentums[index[id(variables[name])]]
                for name in trainable_parameter_names(*self.architecture())}

    def _previous_rate(self, step: int) -> float:
        """The rate ``v`` holds after ``step`` steps (that of step ``step - 1``; step 0's before the
        first), in float64 as the compiled step computes it."""
        if self.schedule is None:
            return self.lr
        return float(self.schedule(max(step - 1, 0)).numpy())

    def export_optimizer_state(self) -> Dict[str, np.ndarray]:
        """``step`` (Keras' ``iterations``) and each parameter's ``momentum_buffer`` in PyTorch's
        convention, ``buf = -v / lr`` from Keras' ``v`` (float64: ``v`` comes back bit for bit)."""
        step = self.steps
        state = {STEP_STATE: np.int64(step)}
        if self.recipe.momentum:
            rate = self._previous_rate(step)
            for name, slot in self._momentums().items():
                state[MOMENTUM_PREFIX + name] = -to_canonical_layout(slot.numpy()).astype(np.float64) / rate
        return state

    def import_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``state``: ``iterations`` (hence the schedule) at ``state["step"]``, a
        constant rate back at the recipe's, and ``v = -lr * buf`` from each given buffer (zero where
        absent). Assigned in place: the compiled steps stay."""
        step = int(state[STEP_STATE])
        self.optimizer.iterations.assign(step)
        if self.schedule is None:
            self.optimizer.learning_rate = float(self.recipe.schedule.lr)
        if self.recipe.momentum:
            rate = self._previous_rate(step)
            for name, slot in self._momentums().items():
                buffer = state.get(MOMENTUM_PREFIX + name)
                if buffer is None:
                    slot.assign(np.zeros(slot.shape, np.float32))
                else:  # rounds -buf * lr to the float32 v it came from
                    slot.assign(from_canonical_layout(-np.asarray(buffer, np.float64) * rate))

    def to_host(self, values):
        """Python floats of step results: the one place that waits for the device."""
        if not values:
            return []
        return [float(v) for v in tf.stack(values).numpy()]

    def export_weights(self):
        return export_weights(self.net)

    def import_weights(self, weights):
        import_weights(self.net, weights)

    def architecture(self):
        return architecture(self.net)

    def matmul_gflops(self, size: int = 2048, repeats: int = 5) -> float:
        """TensorFlow's own fp32 ``size x size`` matrix multiply on the device, in GFLOP/s (bench's peak)."""
        use_tf32(False)  # fp32 whatever the precision; each step sets the switch again
        with tf.device(self.device):
            # Seeded: with op determinism on, TensorFlow refuses random ops without a seed.
            a = tf.random.stateless_uniform((size, size), seed=(0, 0))
            b = tf.random.stateless_uniform((size, size), seed=(0, 1))
            tf.reduce_sum(tf.matmul(a, b)).numpy()  # warm-up, and wait for it
            start = time.perf_counter()
            for _ in range(repeats):
                c = tf.matmul(a, b)
            tf.reduce_sum(c).numpy()
        return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9

    def peak_memory_bytes(self):
        """Peak device memory on a GPU; ``None`` on the CPU (bench then reports the process's)."""
        if self.device.startswith("/GPU"):
            return tf.config.experimental.get_memory_info(self.device[1:])["peak"]
        return None

    def reset_peak_memory(self) -> bool:
        if self.device.startswith("/GPU"):
            tf.config.experimental.reset_memory_stats(self.device[1:])
            return True
        return super().reset_peak_memory()


def loss_and_gradients(net, images, labels):
    """Mean cross-entropy and canonical name -> gradient (canonical layout), train mode.

    Like one training forward and backward pass: BatchNorm uses batch statistics and
    updates its running ones; no weights change.
    """
    variables = canonical_variables(net)
    names = trainable_parameter_names(*architecture(net))
    x, y = to_tensor(images), to_tensor(np.asarray(labels, dtype=np.int64))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(_cross_entropy(net(x, training=True), y))
    gradients = tape.gradient(loss, [variables[name] for name in names])
    return float(loss.numpy()), {name: to_canonical_layout(g.numpy()) for name, g in zip(names, gradients)}


def train(**kwargs):
    """:func:`common.training.train` with this backend."""
    return training.train(Trainer, **kwargs)


def evaluate(**kwargs):
    """:func:`common.training.evaluate` with this backend."""
    return training.evaluate(Trainer, **kwargs)


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None):
    """The chapter's ``train_ch6`` (:func:`common.training.train_ch6` with this backend): ``net``
    is the chapter's net-building function or a network."""
    return training.train_ch6(Trainer, net, train_iter, test_iter, num_epochs, lr, device)
