"""The chapter's own TensorFlow code, kept only as the baseline of ``resnet-fmnist bench --reference``.

``Residual``, ``ResnetBlock`` and ``net`` are the book's (d2l-en 0.17,
``chapter_convolutional-modern/resnet.md``, TensorFlow tab: 'same' padding, Keras'
default BatchNorm and Glorot init); the training step is what the book's ``train_ch6``
(``d2l/tensorflow.py``) runs: ``net.compile(SGD(lr), SparseCategoricalCrossentropy(from_logits=True),
metrics=['accuracy'])`` under a ``OneDeviceStrategy``, then ``fit``, whose per-batch work
is the compiled model's ``train_on_batch`` (Keras' own ``jit_compile="auto"``, which is no
XLA on a CPU); the callback's ``net.evaluate`` is ``test_on_batch``. One change: Keras 3
tracks a list attribute as a plain list, so ``ResnetBlock.call`` iterates
``self.residual_layers`` instead of the Keras 2 ``self.residual_layers.layers``.
:class:`ReferenceTrainer` only wraps them in the Trainer contract :mod:`common.bench`
drives. Nothing else uses this module.
"""
from __future__ import annotations

import tensorflow as tf

from common.backend import device_label
from common.hparams import check_precision
from common.spec import get_spec

from .model import export_weights, import_weights
from .train import DTYPE_POLICIES, TF32_DEFAULT, Trainer, use_dtype_policy, use_tf32

__all__ = ["ReferenceTrainer"]


class Residual(tf.keras.Model):  #@save
    """The Residual block of ResNet."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = tf.keras.layers.Conv2D(
            num_channels, padding='same', kernel_size=3, strides=strides)
        self.conv2 = tf.keras.layers.Conv2D(
            num_channels, kernel_size=3, padding='same')
        self.conv3 = None
        if use_1x1conv:
            self.conv3 = tf.keras.layers.Conv2D(
                num_channels, kernel_size=1, strides=strides)
        self.bn1 = tf.keras.layers.BatchNormalization()
        self.bn2 = tf.keras.layers.BatchNormalization()

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return tf.keras.activations.relu(Y)


class ResnetBlock(tf.keras.layers.Layer):
    def __init__(self, num_channels, num_residuals, first_block=False,
                 **kwargs):
        super(ResnetBlock, self).__init__(**kwargs)
        self.residual_layers = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                self.residual_layers.append(
                    Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                self.residual_layers.append(Residual(num_channels))

    def call(self, X):
        for layer in self.residual_layers:
            X = layer(X)
        return X


def net():
    return tf.keras.Sequential([
        # The following layers are the same as b1 that we created earlier
        tf.keras.layers.Conv2D(64, kernel_size=7, strides=2, padding='same'),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.Activation('relu'),
        tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same'),
        # The following layers are the same as b2, b3, b4, and b5 that we
        # created earlier
        ResnetBlock(64, 2, first_block=True),
        ResnetBlock(128, 2),
        ResnetBlock(256, 2),
        ResnetBlock(512, 2),
        tf.keras.layers.GlobalAvgPool2D(),
        tf.keras.layers.Dense(units=10)])


class ReferenceTrainer(Trainer):
    """The book's net and ``train_ch6`` step behind the Trainer contract (see :mod:`common.backend`).

    A :class:`resnet_tf.train.Trainer` for its learning rate, matmul yardstick and peak memory;
    the network, the optimizer and the steps are the book's, built here instead of this
    project's (so the base constructor is not called).

    ``precision=None`` runs the book's code with TensorFlow's defaults (float32 with TF32 on, on
    GPUs that have it). A precision (:data:`common.hparams.PRECISIONS`) applies this project's
    settings for it, as :class:`resnet_tf.train.Trainer` does: fp32 turns TF32 off, tf32 on, and
    bf16 sets Keras' ``mixed_bfloat16`` policy on every layer of the book's network (Keras'
    BatchNormalization then computes in float32, and the compiled loss casts the bfloat16 logits
    to float32). The TF32 switch is set before each step: the process's other trainers set it too.
    No determinism switch: the book's code has none; but once a deterministic trainer on a GPU
    has turned on TensorFlow's op determinism in this process, it stays on for this one too
    (see :func:`resnet_tf.train.use_op_determinism`).
    """

    def __init__(self, device=None, lr=0.05, precision=None):
        self.precision = None if precision is None else check_precision(precision)
        self.device = self.resolve_device(device)
        kind, index = self.device[1:].split(":")
        self.device_name = device_label("cpu" if kind == "CPU" else "gpu", int(index))
        self._use_tf32()
        # train_ch6, as the book writes it.
        self.strategy = tf.distribute.OneDeviceStrategy(self.device)
        with self.strategy.scope():
            self.optimizer = tf.keras.optimizers.SGD(learning_rate=lr)
            loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            self.net = net()
            if self.precision is not None:
                use_dtype_policy(self.net, DTYPE_POLICIES[self.precision])
            self.net.compile(optimizer=self.optimizer, loss=loss, metrics=['accuracy'])

    def _use_tf32(self):
        use_tf32(TF32_DEFAULT if self.precision is None else self.precision == "tf32")

    def to_batch(self, images, labels):
        # The book's loader yields NHWC tensors (its images are NCHW-free: one channel).
        with tf.device(self.device):
            return tf.constant(images.transpose(0, 2, 3, 1)), tf.constant(labels)

    def train_step(self, X, y):
        # train_on_batch returns the batch's mean loss and accuracy (metrics reset per call).
        self._use_tf32()
        loss, accuracy = self.net.train_on_batch(X, y)
        return loss * X.shape[0], accuracy * X.shape[0]

    def eval_step(self, X, y):
        self._use_tf32()
        loss, accuracy = self.net.test_on_batch(X, y)
        return loss * X.shape[0], accuracy * X.shape[0]

    def to_host(self, values):
        return [float(v) for v in values]

    def _built(self):
        if not self.net.built:  # the book's net has no variables before its first batch
            with self.strategy.scope():
                self.net.build((None, None, None, 1))
        return self.net

    def export_weights(self):
        return export_weights(self._built())

    def import_weights(self, weights):
        import_weights(self._built(), weights)

    def architecture(self):
        return get_spec("resnet18"), 1, 10  # the book's net(): one input channel, ten classes
