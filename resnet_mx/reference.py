"""The chapter's own MXNet code, kept only as the baseline of ``resnet-fmnist bench --reference``.

``Residual``, the ``nn.Sequential`` of b1..b5 and the training step are the book's, unmodified:
d2l-en ``chapter_convolutional-modern/resnet.md`` (MXNet tab) and ``train_ch6`` of
``d2l/mxnet.py`` (``nn.Block`` run imperatively, Gluon's default BatchNorm, ``init.Xavier()``,
``gluon.Trainer`` SGD, ``SoftmaxCrossEntropyLoss``, ``d2l.accuracy`` turning the count into a
Python float every step). The only tokens changed are those of the NumPy interface
(``npx.set_np()``) the current book writes, in their legacy NDArray form, so the benchmark
leaves MXNet's array mode (global per thread) alone: ``npx.relu`` -> ``nd.relu``, ``float(x)`` ->
``float(x.asscalar())``, ``as_in_ctx`` -> ``as_in_context``. :class:`ReferenceTrainer` only
wraps the code in the Trainer contract :mod:`common.bench` drives. Nothing else uses this
module. (``tests/chapter_mx.py`` runs the chapter's cells in NumPy mode, as written.)
"""
from __future__ import annotations

from typing import Dict, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init, nd
from mxnet.gluon import nn

from common.backend import device_label
from common.spec import ResNetSpec, get_spec

from .model import export_weights, import_weights
from .train import Trainer, set_precision

__all__ = ["ReferenceTrainer"]


class Residual(nn.Block):  #@save
    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1,
                               strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1,
                                   strides=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def forward(self, X):
        Y = nd.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return nd.relu(Y + X)


def resnet_block(num_channels, num_residuals, first_block=False):
    blk = nn.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk


def chapter_net():
    net = nn.Sequential()
    net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
            nn.BatchNorm(), nn.Activation('relu'),
            nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(resnet_block(64, 2, first_block=True),
            resnet_block(128, 2),
            resnet_block(256, 2),
            resnet_block(512, 2))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    return net


def accuracy(y_hat, y):  #@save
    """Compute the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.astype(y.dtype) == y
    return float(cmp.astype(y.dtype).sum().asscalar())


class ReferenceTrainer(Trainer):
    """The book's net and ``train_ch6`` step behind the Trainer contract (see :mod:`common.backend`).

    Inherits the device choice and the yardsticks (matmul peak, peak memory); its own
    constructor keeps the book's network, initialisation and optimizer. Weights go in and out
    by :func:`resnet_mx.model.export_weights`' names, which also map the chapter's network.

    ``precision=None`` runs it with MXNet's defaults (on a GPU: cuDNN autotuning, and TF32 where
    cuDNN takes it, unless a Trainer of this process has fixed it); ``fp32`` or ``tf32`` with this
    project's switches for them (:func:`resnet_mx.train.set_precision`; no determinism, as the
    chapter); ``bf16`` raises ValueError: the chapter's network is an imperative ``nn.Block``,
    which MXNet turns bfloat16 only through ``amp.init()``, a rewrite of every operator for the
    rest of the process.
    """

    def __init__(self, device=None, lr=0.05, precision=None):
        self.device = ctx = self.resolve_device(device)
        self.device_name = device_label(ctx.device_type, ctx.device_id)
        if precision == "bf16":
            raise ValueError("the chapter's MXNet network runs imperatively (nn.Block), which MXNet computes in bf16 "
                             "only after amp.init(), a process-wide rewrite of every operator that would turn every "
                             "later fp32 network bf16 too; bf16 works for this project's network (Trainer)")
        if precision is not None:
            set_precision(precision, False, ctx)
        self.precision = precision
        net = chapter_net()

        # train_ch6, as the book writes it.
        net.initialize(force_reinit=True, ctx=ctx, init=init.Xavier())
        self.net = net
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': lr})
        with autograd.predict_mode():  # Gluon infers the shapes at the first call; the weights need them
            net(nd.zeros((1, 1, 96, 96), ctx=ctx))

    @property
    def lr(self) -> float:
        return float(self.trainer.learning_rate)

    @lr.setter
    def lr(self, value: float) -> None:
        self.trainer.set_learning_rate(float(value))

    def to_batch(self, images, labels):
        # The book's DataLoader yields CPU NDArrays (int32 labels); train_ch6 moves them.
        return nd.array(images, ctx=mx.cpu()), nd.array(np.asarray(labels), ctx=mx.cpu(), dtype=np.int32)

    def train_step(self, X, y):
        X, y = X.as_in_context(self.device), y.as_in_context(self.device)
        with autograd.record():
            y_hat = self.net(X)
            l = self.loss(y_hat, y)
        l.backward()
        self.trainer.step(X.shape[0])
        return l.sum(), accuracy(y_hat, y)

    def eval_step(self, X, y):
        # evaluate_accuracy_gpu: predict mode; the loss is added for the contract.
        X, y = X.as_in_context(self.device), y.as_in_context(self.device)
        y_hat = self.net(X)
        return self.loss(y_hat, y).sum(), accuracy(y_hat, y)

    def to_host(self, values):
        mx.nd.waitall()
        return [float(v.asscalar()) if isinstance(v, nd.NDArray) else float(v) for v in values]

    def export_weights(self) -> Dict[str, np.ndarray]:
        return export_weights(self.net)

    def import_weights(self, weights) -> None:
        import_weights(self.net, weights)

    def architecture(self) -> Tuple[ResNetSpec, int, int]:
        return get_spec("resnet18"), 1, 10
