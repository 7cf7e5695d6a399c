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
from typing import Dict, List, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array

from common import contract, training
from common.backend import device_label
from common.hparams import check_precision
from common.naming import trainable_parameter_names
from common.spec import ResNetSpec

from .data import to_tensor
from .kernels import legacy_operators, use_bfloat16
from .model import architecture, canonical_variables, export_weights, import_weights, resnet

__all__ = ["try_gpu", "set_precision", "Trainer", "loss_and_gradients", "train", "evaluate", "train_ch6"]


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


def _scalar(value) -> float:
    """A one-element array (legacy ``(1,)`` or NumPy-mode ``()``) as a Python float."""
    return float(value.asnumpy().item())


class Trainer(contract.Trainer):
    """One network, its SGD optimizer and loss on one device; see :class:`common.contract.Trainer`.

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
    """

    backend = "mx"
    framework = f"MXNet {mx.__version__}"

    def __init__(self, net=None, *, arch="resnet18", style="d2l", num_classes=10, in_channels=1, lr=0.05,
                 device=None, precision="fp32", deterministic=True):
        self.precision, self.deterministic = check_precision(precision), bool(deterministic)
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
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()  # MXNet's fused log-softmax + pick
        # Plain SGD: no momentum, no weight decay. step(batch_size) rescales the summed
        # gradient by 1 / batch_size, so the update is that of the mean loss.
        self.optimizer = gluon.Trainer(net.collect_params(), "sgd",
                                       {"learning_rate": lr, "momentum": 0.0, "wd": 0.0}, kvstore=None)

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
        return float(self.optimizer.learning_rate)

    @lr.setter
    def lr(self, value: float) -> None:
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
        """One SGD step; (loss summed over the batch, number correct) without waiting for them."""
        with autograd.record():
            logits = self.net(x)
            losses = self.loss(logits, y)
        losses.backward()
        self.optimizer.step(x.shape[0])
        return losses.sum(), _correct(logits, y)

    def eval_step(self, x, y):
        """(loss summed over the batch, number correct) in eval mode, without waiting for them."""
        logits = self.net(x)
        return self.loss(logits, y).sum(), _correct(logits, y)

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
