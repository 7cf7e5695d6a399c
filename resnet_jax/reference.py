"""The chapter's own JAX code, kept only as the baseline of ``resnet-fmnist bench --reference``.

``Residual``, ``ResNet`` (with ``b1``, ``block`` and ``create_net``) and ``ResNet18`` are the
book's (d2l-en, ``chapter_convolutional-modern/resnet.md``, JAX tab: 'same' padding, Flax's
BatchNorm and default initialisation); the training step is what the book's ``d2l.Trainer``
(``d2l/jax.py``) runs for a model with BatchNorm: ``Trainer.fit`` makes a ``TrainState`` (with
``batch_stats`` and ``dropout_rng``) over ``optax.sgd(lr)``, and each batch of ``fit_epoch`` is
``Classifier.training_step`` (``jax.value_and_grad`` of the jitted ``Classifier.loss``, the
BatchNorm version), then ``state.apply_gradients``, a new dropout key and the new ``batch_stats``,
each an eager call; ``validation_step`` is ``loss`` and ``accuracy``, after ``fit_epoch``'s
``self.model.training = False`` (which the jitted methods see: the module is their static
argument and ``state.apply_fn`` its bound ``apply``). Changes: the
``Classifier``'s plotting (``self.plot``, the ``ProgressBoard``) is left out, and the
``TrainState``'s ``dropout_rng: jax.random.PRNGKeyArray`` is typed ``jax.Array`` (JAX removed
``PRNGKeyArray``). The training step computes no accuracy (the book's does not either): its
number correct is 0. :class:`ReferenceTrainer` only wraps them in the Trainer contract
:mod:`common.bench` drives. Nothing else uses this module.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from jax import numpy as jnp

from common.backend import device_label
from common.hparams import check_precision
from common.spec import get_spec

from . import kernels
from .model import Network, export_weights, import_weights
from .train import Trainer

__all__ = ["ReferenceTrainer"]


class Classifier(nn.Module):
    """d2l.Module and d2l.Classifier (d2l/jax.py): the parts a training and a validation step run."""

    def forward(self, X, *args, **kwargs):
        assert hasattr(self, 'net'), 'Neural network is defined'
        return self.net(X, *args, **kwargs)

    def __call__(self, X, *args, **kwargs):
        return self.forward(X, *args, **kwargs)

    def configure_optimizers(self):
        return optax.sgd(self.lr)

    def apply_init(self, dummy_input, key):
        params = self.init(key, *dummy_input)  # dummy_input tuple unpacked
        return params

    def training_step(self, params, batch, state):
        # Here value is a tuple since models with BatchNorm layers require
        # the loss to return auxiliary data
        value, grads = jax.value_and_grad(
            self.loss, has_aux=True)(params, batch[:-1], batch[-1], state)
        l, _ = value
        return value, grads

    def validation_step(self, params, batch, state):
        # Discard the second returned value. It is used for training models
        # with BatchNorm layers since loss also returns auxiliary data
        l, _ = self.loss(params, batch[:-1], batch[-1], state)
        return l, self.accuracy(params, batch[:-1], batch[-1], state)

    @partial(jax.jit, static_argnums=(0, 5))
    def accuracy(self, params, X, Y, state, averaged=True):
        """Compute the number of correct predictions."""
        Y_hat = state.apply_fn({'params': params,
                                'batch_stats': state.batch_stats},  # BatchNorm Only
                               *X)
        Y_hat = jnp.reshape(Y_hat, (-1, Y_hat.shape[-1]))
        preds = jnp.argmax(Y_hat, axis=1).astype(Y.dtype)
        compare = (preds == jnp.reshape(Y, -1)).astype(jnp.float32)
        return jnp.mean(compare) if averaged else compare

    @partial(jax.jit, static_argnums=(0, 5))
    def loss(self, params, X, Y, state, averaged=True):
        Y_hat, updates = state.apply_fn({'params': params,
                                         'batch_stats': state.batch_stats},
                                        *X, mutable=['batch_stats'],
                                        rngs={'dropout': state.dropout_rng})
        Y_hat = jnp.reshape(Y_hat, (-1, Y_hat.shape[-1]))
        Y = jnp.reshape(Y, (-1,))
        fn = optax.softmax_cross_entropy_with_integer_labels
        return (fn(Y_hat, Y).mean(), updates) if averaged else (fn(Y_hat, Y), updates)


class Residual(nn.Module):  #@save
    """The Residual block of ResNet models."""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self):
        self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3),
                             padding='same', strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3),
                             padding='same')
        if self.use_1x1conv:
            self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1),
                                 strides=self.strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return nn.relu(Y)


class ResNet(Classifier):
    arch: tuple
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = self.create_net()

    def b1(self):
        return nn.Sequential([
            nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding='same'),
            nn.BatchNorm(not self.training), nn.relu,
            lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2),
                                  padding='same')])

    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(num_channels, use_1x1conv=True,
                                    strides=(2, 2), training=self.training))
            else:
                blk.append(Residual(num_channels, training=self.training))
        return nn.Sequential(blk)

    def create_net(self):
        net = nn.Sequential([self.b1()])
        for i, b in enumerate(self.arch):
            net.layers.extend([self.block(*b, first_block=(i==0))])
        net.layers.extend([nn.Sequential([
            # Flax does not provide a GlobalAvg2D layer
            lambda x: nn.avg_pool(x, window_shape=x.shape[1:3],
                                  strides=x.shape[1:3], padding='valid'),
            lambda x: x.reshape((x.shape[0], -1)),
            nn.Dense(self.num_classes)])])
        return net


class ResNet18(ResNet):
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    lr: float = 0.1
    num_classes: int = 10


class TrainState(train_state.TrainState):
    batch_stats: Any
    dropout_rng: jax.Array


class ReferenceTrainer(Trainer):
    """The book's net and ``d2l.Trainer`` step behind the Trainer contract (see :mod:`common.backend`).

    A :class:`resnet_jax.train.Trainer` for its matmul yardstick and peak memory; the network,
    the optimizer and the steps are the book's, built here instead of this project's (so the base
    constructor is not called).

    ``precision=None`` runs the book's code with JAX's defaults (TF32 on GPUs that have it);
    fp32 and tf32 trace its steps as :class:`resnet_jax.train.Trainer` does. The book's modules
    have no compute dtype, so bf16 is refused.
    """

    def __init__(self, device=None, lr=0.05, precision=None):
        self.precision = None if precision is None else check_precision(precision)
        if self.precision == "bf16":
            raise ValueError("the book's JAX code has no compute dtype to run in bf16; use --precision fp32 or tf32")
        self.device = self.resolve_device(device)
        self.device_name = device_label("cpu" if self.device.platform == "cpu" else "gpu", self.device.id)
        self.model = ResNet18(lr=lr)
        self.layout = Network(ResNet18(lr=lr))  # canonical names of the book's variables
        # Trainer.fit, as the book writes it, up to its epoch loop (dummy_input: one 28 x 28 image).
        with jax.default_device(self.device):
            root_key = jax.random.PRNGKey(0)
            params_key, dropout_key = jax.random.split(root_key)
            key = {'params': params_key, 'dropout': dropout_key}
            dummy_input = (jnp.zeros((1, 28, 28, 1)),)
            variables = self.model.apply_init(dummy_input, key=key)
            params = variables['params']
            batch_stats = variables['batch_stats']
            self.state = TrainState.create(apply_fn=self.model.apply,
                                           params=params,
                                           batch_stats=batch_stats,
                                           dropout_rng=dropout_key,
                                           tx=self.model.configure_optimizers())

    @property
    def lr(self) -> float:
        return self.model.lr

    def _scope(self):
        return kernels.precision_scope(self.precision) if self.precision is not None else _no_scope()

    def to_batch(self, images, labels):
        # The book's loader yields NHWC arrays (one channel: NCHW's memory order) and int32 labels.
        images = np.asarray(images, np.float32)
        return (jax.device_put(images.reshape(images.shape[0], images.shape[2], images.shape[3], 1), self.device),
                jax.device_put(np.asarray(labels, np.int32), self.device))

    def train_step(self, X, y):
        # fit_epoch's loop body, as the book writes it (fit_epoch sets the mode before its loops).
        self.model.training = True
        with self._scope():
            (loss, mutated_vars), grads = self.model.training_step(self.state.params, (X, y), self.state)
            self.state = self.state.apply_gradients(grads=grads)
            # Can be ignored for models without Dropout Layers
            self.state = self.state.replace(
                dropout_rng=jax.random.split(self.state.dropout_rng)[0])
            self.state = self.state.replace(batch_stats=mutated_vars['batch_stats'])
        return loss * X.shape[0], 0.0

    def eval_step(self, X, y):
        self.model.training = False
        with self._scope():
            loss, accuracy = self.model.validation_step(self.state.params, (X, y), self.state)
        return loss * X.shape[0], accuracy * X.shape[0]

    def _synced(self):
        self.layout.variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
        return self.layout

    def export_weights(self):
        return export_weights(self._synced())

    def import_weights(self, weights):
        net = self._synced()
        import_weights(net, weights)
        variables = jax.device_put(net.variables, self.device)
        self.state = self.state.replace(params=variables["params"], batch_stats=variables["batch_stats"])

    def architecture(self):
        return get_spec("resnet18"), 1, 10  # the book's ResNet18: one input channel, ten classes


class _no_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
