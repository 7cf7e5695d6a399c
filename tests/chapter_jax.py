"""The chapter's JAX code (d2l-en, chapter_convolutional-modern/resnet.md, the jax tab), run against
``resnet_jax`` in place of ``d2l``: NHWC arrays, Flax linen modules used as the book uses them
(``blk.init_with_output(key, X)``), ``Residual(num_channels, use_1x1conv, strides, training)`` and
the chapter's ``ResNet`` with its ``b1``, ``block`` and ``create_net``, whose blocks are
``resnet_jax``'s ``Residual`` (plain layers, as the chapter writes it: no fast paths). The book's
``ResNet`` is a ``d2l.Classifier``; here a plain ``nn.Module`` (the Classifier adds the book's
training machinery, which ``d2l.train_ch6`` stands in for), with the Classifier's ``forward``.
The training cell trains on a small synthetic subset (:func:`training_cell`)."""
import random

import jax
import numpy as np
from flax import linen as nn
from jax import numpy as jnp

import resnet_jax as d2l
from resnet_jax import Residual

# The book's d2l.get_key (d2l/jax.py), with int(1e6): randint of a float is deprecated since Python 3.10.
get_seed = lambda: random.randint(0, int(1e6))  # noqa: E731
get_key = lambda: jax.random.PRNGKey(get_seed())  # noqa: E731


def _nchw(shape):
    return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape)


def _nhwc(shape_nchw):
    n, c, h, w = shape_nchw
    return (n, h, w, c)


def residual_output_shape(input_channels, num_channels, use_1x1conv, strides, input_shape_nchw):
    assert input_shape_nchw[1] == input_channels
    blk = Residual(num_channels, use_1x1conv=use_1x1conv, strides=(strides, strides))
    X = jax.random.normal(get_key(), _nhwc(input_shape_nchw))
    return _nchw(blk.init_with_output(get_key(), X)[0].shape)


def block_output_shape(block_name, arguments, input_shape_nchw):
    """The exercises' blocks as a reader writes them: ``d2l.<block_name>(**arguments)`` (Flax infers
    the input channels), on a random NHWC batch; the output shape, NCHW."""
    blk = getattr(d2l, block_name)(**arguments)
    X = jax.random.normal(get_key(), _nhwc(input_shape_nchw))
    return _nchw(blk.init_with_output(get_key(), X)[0].shape)


class ResNet(nn.Module):
    arch: tuple
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = self.create_net()

    def b1(self):
        # The chapter's b1, verbatim: Flax's layers ('same' padding, Flax's BatchNorm).
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

    def __call__(self, X, *args, **kwargs):  # d2l.Module's forward
        return self.net(X, *args, **kwargs)


class ResNet18(ResNet):
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    lr: float = 0.1
    num_classes: int = 10


def chapter_net_output_shapes(input_shape_nchw):
    # The chapter's ResNet18(training=False).layer_summary(...): each of the net's layers in turn;
    # the last one's pool, flatten and dense one by one, keeping flatten's and dense's outputs.
    model = ResNet18(training=False)
    X = jnp.zeros(_nhwc(input_shape_nchw))
    params = model.init(get_key(), X)
    bound_model = model.clone().bind(params, mutable=['batch_stats'])
    _ = bound_model(X)
    shapes = []
    *blocks, last = bound_model.net.layers
    for layer in blocks:
        X = layer(X)
        shapes.append(_nchw(X.shape))
    for index, layer in enumerate(last.layers):
        X = layer(X)
        if index > 0:
            shapes.append(_nchw(X.shape))
    return shapes


def built_net(book=False):
    """The chapter's ResNet18 above, or the book's own code (resnet_jax.reference), as a network
    (module and variables)."""
    from resnet_jax import reference

    return d2l.Network(reference.ResNet18() if book else ResNet18())


def call_resnet18_with_other_layout(shape_nchw):
    net = d2l.resnet18()
    return net.mode(False).apply(net.variables, jnp.zeros(shape_nchw))


def training_cell(num_epochs=1, batch_size=32, resize=96, subset=64, test_subset=32):
    """The chapter's training cell on ``subset`` synthetic examples: (net, train_ch6's history).

    The chapter trains 10 epochs on all of Fashion-MNIST (lr 0.01, batch 128, resize 96) with
    ``d2l.Trainer``; here ``d2l.train_ch6`` with the other backends' recipe (lr 0.05), and the
    epochs, batch and data are the arguments: that takes hours on two CPU cores.
    """
    lr = 0.05
    model = d2l.Network(ResNet18(lr=lr))
    train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size, resize=resize, subset=subset,
                                                        test_subset=test_subset, synthetic=True)
    history = d2l.train_ch6(model, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())
    return model, history


#: Whether the chapter's network computes the oracle's function: not in JAX (its b1's padding='same'
#: pads asymmetrically, and Flax's BatchNorm has other constants).
COMPUTES_THE_ORACLES_FUNCTION = False


def bfloat16_round_trip(values):
    """float32 -> the framework's bfloat16 -> float32 (test_precision holds the oracle's rounding to it)."""
    return np.asarray(jnp.asarray(values).astype(jnp.bfloat16).astype(jnp.float32))
