"""Training with MXNet Gluon: the :class:`Trainer` that :mod:`common.training` drives, and the chapter's API.

The network runs hybridized with ``static_alloc=True, static_shape=True`` (one cached graph,
memory planned once); MXNet's engine is asynchronous, so a step returns as soon as its work
is queued and the next batch is converted while the device computes.

Precision and determinism (:func:`set_precision`, ``Trainer(precision=..., deterministic=...)``)
are switches of a GPU; on the CPU only ``bf16`` changes anything (:func:`resnet_mx.kernels.use_bfloat16`).
"""
from __future__ import annotations

import os
import re
import time
from typing import Dict, List, Mapping, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array

from common import contract, training
from common.backend import device_label
from common.hparams import check_precision
from common.naming import trainable_parameter_names
from common.optim import MOMENTUM_PREFIX, STEP_STATE, WARMUP_START_FACTOR, Recipe, Schedule, resolve_recipe
from common.spec import ResNetSpec

from .data import to_tensor
from .kernels import legacy_operators, use_bfloat16
from .model import architecture, canonical_variables, export_weights, import_weights, resnet

__all__ = ["try_gpu", "set_precision", "make_optimizer", "OneCycleScheduler", "OutOfPlaceNAG",
           "LabelSmoothingCrossEntropyLoss", "Trainer", "loss_and_gradients", "train", "evaluate", "train_ch6"]


def try_gpu(i=0):
    """Return gpu(i) if exists, otherwise return cpu()."""
    return mx.gpu(i) if mx.context.num_gpus() >= i + 1 else mx.cpu()


#: The TF32 setting this process's GPU work runs with, once a GPU Trainer has fixed it.
_gpu_tf32 = None


def set_precision(precision: str = "fp32", deterministic: bool = True, device=None) -> None:
    """MXNet's process-wide switches for :data:`common.hparams.PRECISIONS` and determinism, on a GPU.

    On the CPU there is nothing to switch: a CPU has no TF32 (``tf32`` computes fp32), ``bf16``
    is a property of the network (:func:`resnet_mx.kernels.use_bfloat16`), and the CPU kernels
    are deterministic already (tests/test_training.py's resume equality).

    On a GPU (neither measured nor tested here: no CUDA build of MXNet in this project):

    * TF32: MXNet 1.9 has no switch of its own; cuDNN 8 may round fp32 convolutions to TF32 on
      Ampere and later GPUs by default. ``fp32`` sets ``NVIDIA_TF32_OVERRIDE=0`` (NVIDIA's
      libraries then never use TF32), ``tf32`` leaves it unset. The libraries read it once, when
      MXNet first starts them in the process (its first GPU operation), so the first GPU
      Trainer of a process fixes it for good; a later one asking the other way raises ValueError.
    * ``bf16``: ValueError; MXNet 1.9's bfloat16 kernels are oneDNN's (apache/mxnet#17265), CPU only.
    * ``deterministic``: ``MXNET_ENFORCE_DETERMINISM=1`` (``0`` otherwise), which restricts cuDNN
      to deterministic convolution and max-pooling algorithms; it is read whenever cuDNN picks
      one (a network's first step at each input size), so the last Trainer built sets it for
      every network that starts afterwards. The Trainer also turns cuDNN's autotuning off in its
      own network's convolutions (their ``cudnn_tune``, as ``MXNET_CUDNN_AUTOTUNE_DEFAULT=0``
      does for every network). ``deterministic=False`` lets cuDNN autotune (MXNet's default) and
      pick non-deterministic algorithms, possibly faster (not measured: no MXNet GPU here), at
      the cost of reruns and resumed runs no longer repeating an uninterrupted one exactly.
    """
    global _gpu_tf32
    check_precision(precision)
    if device is None or device.device_type != "gpu":
        return
    if precision == "bf16":
        raise ValueError("MXNet 1.9 computes bfloat16 on the CPU only (its oneDNN kernels): use --precision fp32 "
                         "or tf32 on a GPU, or bf16 with --device cpu")
    tf32 = precision == "tf32"
    if _gpu_tf32 is None:
        if tf32:
            os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
        else:
            os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
        _gpu_tf32 = tf32
    elif _gpu_tf32 != tf32:
        raise ValueError(f"this process already runs its GPU work {'with' if _gpu_tf32 else 'without'} TF32, and "
                         f"NVIDIA's libraries read that once per process: run --precision {precision} in a new process")
    os.environ["MXNET_ENFORCE_DETERMINISM"] = "1" if deterministic else "0"


class OneCycleScheduler(mx.lr_scheduler.LRScheduler):
    """PyTorch's ``OneCycleLR`` (cosine annealing, momentum not cycled) as an MXNet scheduler, which
    MXNet 1.9 has none of: the rate of update ``num_update`` (read as the step's 0-based index, see
    :func:`make_optimizer`) is :meth:`common.optim.Schedule.lr_at`'s closed form."""

    def __init__(self, schedule: Schedule):
        super().__init__(base_lr=schedule.lr)
        self.schedule = schedule

    def __call__(self, num_update):
        return self.schedule.lr_at(num_update)


class OutOfPlaceNAG(mx.optimizer.NAG):
    """``mxnet.optimizer.NAG`` whose ``nag_mom_update`` reads a copy of the weight it overwrites.

    MXNet 1.9.1's NAG kernel writes the new weight before it reads the weight again for the
    momentum's ``wd * w``; NAG passes ``out=weight``, so ``v`` takes the new weight where the op
    works in place and the old one (PyTorch's) where MXNet hands the kernel a copy (as it does for
    a convolution's weight after an evaluation pass, oneDNN's layout of it presumably): runs would
    not repeat bit for bit. The copy makes it the old one always. Without weight decay the kernel
    reads the weight once: no copy.
    """

    def _update_impl(self, index, weight, grad, state, multi_precision=False):
        if multi_precision or state is None or not self.wd:
            return super()._update_impl(index, weight, grad, state, multi_precision)
        self._update_count(index)
        options = {"rescale_grad": self.rescale_grad, "momentum": self.momentum}
        if self.clip_gradient:
            options["clip_gradient"] = self.clip_gradient
        mx.nd.nag_mom_update(weight.copy(), grad, state, out=weight, lr=self._get_lr(index), wd=self._get_wd(index),
                             **options)


def _updates_before(kind: str, step: int) -> int:
    """The ``begin_num_update`` of an optimizer whose next step is ``step`` (0-based).

    MXNet's optimizer counts before it asks its scheduler: step ``k`` runs at ``num_update =
    begin_num_update + k + 1``. ``CosineScheduler`` and :class:`OneCycleScheduler` take
    ``num_update`` as the step's 0-based index, as :meth:`common.optim.Schedule.lr_at` does, so
    they begin one lower; ``MultiFactorScheduler`` decays where ``num_update > milestone``, which
    MXNet's own count ``k + 1`` turns into PyTorch's ``k >= milestone``.
    """
    return step - 1 if kind in ("cosine", "onecycle") else step


def make_optimizer(parameters, recipe: Recipe, step: int = 0) -> gluon.Trainer:
    """The ``gluon.Trainer`` of ``recipe`` whose next step is ``step``: MXNet's own optimizer, with
    MXNet's own learning-rate scheduler inside it, configured to compute :mod:`common.optim`'s math.

    ``mxnet.optimizer.SGD``, or ``mxnet.optimizer.NAG`` for Nesterov momentum. SGD's ``wd`` is
    PyTorch's coupled L2 (``g + wd * w``, on every trainable array: Gluon's ``wd_mult`` is 1). In
    MXNet 1.9.1 both keep ``v = momentum * v - lr * (g + wd * w)`` (``sgd_mom_update``,
    ``nag_mom_update``; NAG then steps ``w += momentum * v - lr * (g + wd * w)``, PyTorch's
    Nesterov step): ``v`` is ``-lr`` times PyTorch's buffer, which :meth:`Trainer.update` keeps
    so when the rate changes. The gradient is the sum over the batch; ``step(batch_size)``
    rescales it to the mean loss's.

    NAG runs out of place (:class:`OutOfPlaceNAG`): in place, its weight decay reads the new
    weight at times.

    Schedules, from :mod:`mxnet.lr_scheduler`: ``cosine``: ``CosineScheduler`` (its linear
    warm-up from ``WARMUP_START_FACTOR * lr``, then cosine decay to 0 at ``total_steps``);
    ``step``: ``MultiFactorScheduler`` (times ``gamma`` at each milestone); ``onecycle``:
    :class:`OneCycleScheduler`, an ``LRScheduler`` subclass with :mod:`common.optim`'s closed form,
    because MXNet has no one-cycle schedule (``CosineScheduler`` only decays, and
    ``mxnet.lr_scheduler`` has no way to chain a rising one before it); ``constant`` (and ``step``
    without milestones): no scheduler, the optimizer's ``learning_rate``, which
    :attr:`Trainer.lr` sets. How MXNet's update count meets the schedule's step: :func:`_updates_before`.
    """
    schedule = recipe.schedule
    options = dict(momentum=recipe.momentum, wd=recipe.weight_decay,
                   begin_num_update=_updates_before(schedule.kind, step))
    if schedule.kind == "cosine":
        options["lr_scheduler"] = mx.lr_scheduler.CosineScheduler(
            schedule.total_steps, base_lr=schedule.lr, final_lr=0.0, warmup_steps=schedule.warmup_steps,
            warmup_begin_lr=WARMUP_START_FACTOR * schedule.lr, warmup_mode="linear")
    elif schedule.kind == "step" and schedule.milestones:
        options["lr_scheduler"] = mx.lr_scheduler.MultiFactorScheduler(list(schedule.milestones), factor=schedule.gamma,
                                                                       base_lr=schedule.lr)
    elif schedule.kind == "onecycle":
        options["lr_scheduler"] = OneCycleScheduler(schedule)
    else:
        options["learning_rate"] = schedule.lr
    optimizer = OutOfPlaceNAG(**options) if recipe.nesterov else mx.optimizer.SGD(**options)
    return gluon.Trainer(parameters, optimizer, kvstore=None)


class LabelSmoothingCrossEntropyLoss(gluon.loss.SoftmaxCrossEntropyLoss):
    """PyTorch's ``CrossEntropyLoss(label_smoothing=smoothing)`` per example: Gluon's softmax
    cross-entropy with dense labels (``sparse_label=False``) on the targets ``(1 - smoothing) *
    one_hot(label) + smoothing / classes``, which ``one_hot`` builds from the integer labels."""

    def __init__(self, smoothing: float, classes: int, **kwargs):
        super().__init__(sparse_label=False, **kwargs)
        self._smoothing, self._classes = float(smoothing), int(classes)

    def hybrid_forward(self, F, pred, label, sample_weight=None):
        off = self._smoothing / self._classes
        one_hot = F.npx.one_hot if is_np_array() else F.one_hot
        targets = one_hot(label, self._classes, on_value=1.0 - self._smoothing + off, off_value=off)
        return super().hybrid_forward(F, pred, targets, sample_weight)


def _cudnn_autotune(net, allowed: bool) -> None:
    """Let cuDNN autotune ``net``'s convolutions (MXNet's default), or not (``cudnn_tune="off"``)."""
    def set_tuning(block):
        if isinstance(block, nn.Conv2D):
            if allowed:
                block._kwargs.pop("cudnn_tune", None)
            else:
                block._kwargs["cudnn_tune"] = "off"
            block._clear_cached_op()
    net.apply(set_tuning)
    if isinstance(net, gluon.HybridBlock):
        net._clear_cached_op()


def _place(net, ctx) -> None:
    """Initialise what is not yet initialised on ``ctx`` and move the rest there.

    The chapter's network infers its shapes at the first call; one call on a small dummy
    batch finishes that now, so its weights can be imported at once.
    """
    params = list(net.collect_params().values())
    for param in params:
        if param._data is None and not param._deferred_init:
            param.initialize(ctx=ctx)
    if any(param._deferred_init for param in params):
        first_conv = next((p for p in params if len(p.shape) == 4), None)
        # Unknown sizes are 0, or -1 in NumPy mode; then Fashion-MNIST's one channel.
        in_channels = max(first_conv.shape[1] if first_conv is not None else 0, 0) or 1
        with autograd.predict_mode():
            net((mx.np if is_np_array() else mx.nd).zeros((2, in_channels, 32, 32), ctx=params[0].list_ctx()[0]))
    for param in params:
        if param.list_ctx() != [ctx]:
            param.reset_ctx(ctx)


@legacy_operators
def _correct(logits, labels):
    return (logits.argmax(axis=1) == labels.astype(np.float32)).sum()


@legacy_operators
def _mirrored(images):
    """NCHW images mirrored along the width axis."""
    return mx.nd.flip(images, axis=3)


def _legacy(array):
    """The legacy-NDArray view of a NumPy-mode array (the same memory), as MXNet's optimizers take."""
    return array.as_nd_ndarray() if isinstance(array, mx.np.ndarray) else array


def _momentum(state):
    """The momentum array of an MXNet SGD / NAG state (multi-precision states are ``(momentum, weight32)``)."""
    return state[0] if isinstance(state, (tuple, list)) else state


def _scalar(value) -> float:
    """A one-element array (legacy ``(1,)`` or NumPy-mode ``()``) as a Python float."""
    return float(value.asnumpy().item())


class Trainer(contract.Trainer):
    """One network, its optimizer, schedule and loss on one device; see :class:`common.contract.Trainer`.

    ``net`` may be a built network (a :class:`resnet_mx.model.ResNet` or the chapter's
    ``Sequential``, initialised or not); ``None`` builds ``resnet(arch, num_classes, in_channels, style)``.

    ``precision`` (:data:`common.hparams.PRECISIONS`): ``fp32`` exact; ``tf32`` a GPU's TF32
    convolutions (a CPU computes fp32); ``bf16`` mixed precision through MXNet's AMP graph pass
    (:func:`resnet_mx.kernels.use_bfloat16`): convolutions and the dense layer in bfloat16;
    the weights, their gradients, the SGD update, BatchNorm's parameters and running statistics,
    the logits and the loss in float32. On the CPU only, and for a :class:`resnet_mx.model.ResNet`,
    whose traced graph has that step (any other network, the chapter's ``nn.Sequential`` first:
    ValueError); a network passed in is switched in place. It keeps its fast paths in bf16:
    oneDNN's bfloat16 convolutions on maps of a few pixels are as slow as its float32 ones, and
    the AMP pass converts the matrix products that replace them. ``deterministic``: see
    :func:`set_precision`; it and TF32 are GPU switches, and process-wide.

    ``recipe`` (:class:`common.optim.Recipe`, ``None``: the chapter's plain SGD at ``lr``): the
    optimizer and schedule of :func:`make_optimizer`, label smoothing in the training loss
    (:class:`LabelSmoothingCrossEntropyLoss`; evaluation's is plain), and ``tta="flip"`` in
    :meth:`eval_step`.
    """

    backend = "mx"
    framework = f"MXNet {mx.__version__}"

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True, recipe=None):
        self.precision, self.deterministic = check_precision(precision), bool(deterministic)
        self.recipe = resolve_recipe(lr, recipe)
        self.device = self.resolve_device(device)
        self.device_name = device_label(self.device.device_type, self.device.device_id)
        set_precision(self.precision, self.deterministic, self.device)
        if net is None:
            net = resnet(arch, num_classes=num_classes, in_channels=in_channels, style=style)
        if precision == "bf16":
            use_bfloat16(net)
        _place(net, self.device)
        if self.device.device_type == "gpu":
            _cudnn_autotune(net, allowed=not self.deterministic)
        net.hybridize(static_alloc=True, static_shape=True)
        self.net = net
        # Per example (the step's rescaling makes the mean); the recipe's smoothing in training only.
        self.eval_loss = gluon.loss.SoftmaxCrossEntropyLoss()  # MXNet's fused log-softmax + pick
        smoothing = self.recipe.label_smoothing
        self.loss = (LabelSmoothingCrossEntropyLoss(smoothing, self.architecture()[2]) if smoothing else
                     self.eval_loss)
        self.optimizer = make_optimizer(net.collect_params(), self.recipe)
        self.steps = 0
        self._state_lr = None  # the rate inside MXNet's momentum state: the last step's (None before any)

    @staticmethod
    def resolve_device(device) -> mx.Context:
        """``None`` (a GPU if MXNet sees one, else the CPU), an mx.Context, or "cpu" / "gpu[:N]" / "cuda[:N]"."""
        if device is None:
            return try_gpu()
        if isinstance(device, mx.Context):
            return device
        match = re.fullmatch(r"/?(cpu|gpu|cuda)(?:[:(](\d+)\)?)?", str(device).strip().lower())
        if match is None:
            raise ValueError(f"device must be None, 'cpu', 'gpu:N' ('cuda:N') or an mx.Context, got {device!r}")
        if match.group(1) == "cpu":
            return mx.cpu()
        index = int(match.group(2) or 0)
        if mx.context.num_gpus() < index + 1:
            raise ValueError(f"device {device!r}: MXNet sees {mx.context.num_gpus()} GPU(s) here "
                             "(a GPU needs a CUDA build of mxnet); use 'cpu'")
        return mx.gpu(index)

    @property
    def lr(self) -> float:
        """The rate of the next step: the scheduler's at the update count that step will have."""
        optimizer = self.optimizer.optimizer
        if optimizer.lr_scheduler is None:
            return float(optimizer.lr)
        return float(optimizer.lr_scheduler(optimizer.num_update + 1))

    @lr.setter
    def lr(self, value: float) -> None:
        if self.optimizer.optimizer.lr_scheduler is not None:
            raise ValueError(f"the rate follows the recipe's {self.recipe.schedule.kind} schedule; only a constant "
                             "one can be set")
        self.optimizer.set_learning_rate(float(value))

    def to_batch(self, images, labels):
        """NCHW NumPy (or arrays from :mod:`resnet_mx.data`) -> arrays on the device."""
        if isinstance(images, mx.nd.NDArray):
            images = images.as_in_context(self.device)
        else:
            images = to_tensor(images, self.device)
        if isinstance(labels, mx.nd.NDArray):
            labels = labels.as_in_context(self.device)
        else:
            labels = to_tensor(np.asarray(labels), self.device)
        return images, labels

    def train_step(self, x, y):
        """One optimizer step; (loss summed over the batch, number correct) without waiting for them."""
        with autograd.record():
            logits = self.net(x)
            losses = self.loss(logits, y)
        losses.backward()
        self.update(x.shape[0])
        return losses.sum(), _correct(logits, y)

    def update(self, batch_size: int) -> None:
        """The optimizer's step with the gradients in place, summed over ``batch_size`` examples
        (``step`` rescales them to the mean loss's); the schedule is the optimizer's own.

        MXNet's momentum state is ``v = -lr * buf`` (PyTorch's ``buf``, see :func:`make_optimizer`):
        before a step whose rate differs from the last one's, ``v`` is rescaled by their ratio,
        so that the step computes PyTorch's ``w -= lr_k * buf``. The chapter's recipe (no momentum)
        and a constant rate skip it.
        """
        if self.recipe.momentum:
            lr = self.lr
            if self._state_lr is not None and lr != self._state_lr:
                ratio = lr / self._state_lr  # every rate is > 0 (common.optim)
                for state in self._updater().states.values():
                    momentum = _momentum(state)
                    momentum *= ratio
            self._state_lr = lr
        self.optimizer.step(batch_size)
        self.steps += 1

    def eval_step(self, x, y):
        """(loss summed over the batch, number correct) in eval mode, without waiting for them; with
        the recipe's ``tta="flip"`` the logits are the mean of the image's and its mirror image's."""
        logits = self.net(x)
        if self.recipe.tta == "flip":
            logits = (logits + self.net(_mirrored(x))) / 2
        return self.eval_loss(logits, y).sum(), _correct(logits, y)

    def _updater(self):
        """The updater that holds the optimizer's states, by the gluon.Trainer's parameter index (one
        per device, and this Trainer has one; gluon.Trainer 1.9.1 has no public way to them)."""
        return self.optimizer._updaters[0]

    def _momentum_slots(self) -> Dict[str, Tuple[int, gluon.Parameter]]:
        """Canonical name -> (the gluon.Trainer's index of the parameter, the parameter), per trainable array."""
        variables = canonical_variables(self.net)
        # gluon.Trainer numbers a ParameterDict's parameters in the order of their sorted names.
        index = {name: i for i, name in enumerate(sorted(self.net.collect_params().keys()))}
        return {name: (index[variables[name].name], variables[name])
                for name in trainable_parameter_names(*self.architecture())}

    def export_optimizer_state(self) -> Dict[str, np.ndarray]:
        """``step`` and each trainable array's ``momentum_buffer``, PyTorch's: ``-v / lr`` in float64,
        ``lr`` the rate inside MXNet's state ``v`` (the last step's)."""
        state = {STEP_STATE: np.int64(self.steps)}
        if self.recipe.momentum:
            lr = self.lr if self._state_lr is None else self._state_lr
            states = self._updater().states
            for name, (index, parameter) in self._momentum_slots().items():
                value = states.get(index)
                state[MOMENTUM_PREFIX + name] = (np.zeros(parameter.shape) if value is None else
                                                 -_momentum(value).asnumpy().astype(np.float64) / lr)
        return state

    def import_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """A fresh optimizer whose schedule stands at step ``state["step"]`` (its update count begins
        there), with MXNet's states ``v = float32(-buf * lr)`` of the given buffers, ``lr`` the
        rate of the last step taken as the fresh scheduler gives it (an exact round trip of
        :meth:`export_optimizer_state`'s float64 ``buf``)."""
        self.steps = int(state[STEP_STATE])
        self.optimizer = make_optimizer(self.net.collect_params(), self.recipe, self.steps)
        optimizer = self.optimizer.optimizer
        # Before a step, MXNet's learning_rate is its scheduler's at the count of the last step taken.
        self._state_lr = float(optimizer.learning_rate) if self.steps else None
        if self.recipe.momentum:
            lr = self.lr if self._state_lr is None else self._state_lr
            updater = self._updater()
            for name, (index, parameter) in self._momentum_slots().items():
                slot = optimizer.create_state_multi_precision(index, _legacy(parameter.data(self.device)))
                buffer = state.get(MOMENTUM_PREFIX + name)
                if buffer is not None:
                    _momentum(slot)[:] = (-np.asarray(buffer, np.float64) * lr).astype(np.float32)
                updater.states[index] = slot
                updater.states_synced[index] = True

    def to_host(self, values) -> List[float]:
        """Python floats: the one place that waits for the device.

        It waits for all queued work, the last step's backward pass and update included
        (reading the values alone would wait only for their forward pass), so time measured
        up to here is the time the steps took, as in the synchronous backends.
        """
        mx.nd.waitall()
        return [_scalar(v) for v in values]

    def export_weights(self) -> Dict[str, np.ndarray]:
        return export_weights(self.net)

    def import_weights(self, weights) -> None:
        import_weights(self.net, weights)

    def architecture(self) -> Tuple[ResNetSpec, int, int]:
        return architecture(self.net)

    def matmul_gflops(self, size: int = 2048, repeats: int = 5) -> float:
        """MXNet's own fp32 ``size x size`` matrix multiply on the device, in GFLOP/s (bench's peak)."""
        a = mx.nd.random.uniform(shape=(size, size), ctx=self.device)
        b = mx.nd.random.uniform(shape=(size, size), ctx=self.device)
        mx.nd.dot(a, b).wait_to_read()  # warm-up, and wait for it
        start = time.perf_counter()
        for _ in range(repeats):
            c = mx.nd.dot(a, b)
        c.wait_to_read()
        return 2.0 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def loss_and_gradients(net, images, labels) -> Tuple[float, Dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of a train-mode forward pass and its gradient per canonical name.

    Like a training step's first half: batch statistics (running ones updated), no update.
    """
    params = canonical_variables(net)
    ctx = next(iter(params.values())).list_ctx()[0]
    x, y = to_tensor(images, ctx), to_tensor(np.asarray(labels), ctx)
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y).mean()
    loss.backward()
    names = trainable_parameter_names(*architecture(net))
    return _scalar(loss), {name: params[name].grad(ctx).asnumpy() for name in names}


def train(**kwargs):
    """:func:`common.training.train` with MXNet (same options, same history)."""
    return training.train(Trainer, **kwargs)


def evaluate(**kwargs):
    """:func:`common.training.evaluate` with MXNet."""
    return training.evaluate(Trainer, **kwargs)


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device=None):
    """Train a model with a GPU (defined in Chapter 6): :func:`common.training.train_ch6` with MXNet.

    The network may be uninitialised, as the chapter's is.
    """
    return training.train_ch6(Trainer, net, train_iter, test_iter, num_epochs, lr, device)
