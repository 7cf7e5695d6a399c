"""The chapter's MXNet code (d2l-en, chapter_convolutional-modern/resnet.md, mxnet tab), run
against ``resnet_mx`` in place of ``d2l``, in the chapter's NumPy mode (``npx.set_np()``).

The cells are the chapter's, token for token, except where noted:

* ``from d2l import mxnet as d2l`` imports ``resnet_mx`` instead.
* ``npx.set_np()`` is not run at import: MXNet keeps the array mode per thread for the whole
  process, so it would switch every later test of the session into NumPy mode. Each cell
  below runs inside :func:`numpy_mode`, which calls ``npx.set_np()`` and restores the mode
  that was active before, also when the cell fails.
* The chapter defines ``Residual`` (``#@save``: it becomes ``d2l.Residual``) and
  ``resnet_block``; both definitions are below verbatim, but the cells use ``d2l``'s, which
  are what the tests hold to the oracle (``tests/test_mx_modes.py`` checks that the chapter's
  ``Residual`` and ``d2l.Residual`` compute the same function).
* The layer-shape loop and ``Residual`` calls are also run hybridized, which must agree.
* The training cell trains on a small synthetic subset (:func:`training_cell`).
"""
import warnings
from contextlib import contextmanager

import mxnet as mx
from mxnet import np, npx
from mxnet.gluon import nn

import resnet_mx as d2l


@contextmanager
def numpy_mode():
    """The chapter's ``npx.set_np()`` for the duration of a ``with`` block, then the previous mode."""
    shape, array = mx.util.is_np_shape(), mx.util.is_np_array()
    npx.set_np()
    try:
        yield
    finally:
        npx.set_np(shape=shape, array=array)


# --- the chapter's definitions, verbatim (the cells below use d2l's) ---------------------

class Residual(nn.Block):  #@save
    """The Residual block of ResNet models."""
    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def forward(self, X):
        Y = npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return npx.relu(Y + X)


def resnet_block(num_channels, num_residuals, first_block=False):
    blk = nn.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk


# --- the chapter's cells, with d2l = resnet_mx ----------------------------------------------

def _run(net, X):
    """The chapter's call on an initialised net, imperative and hybridized; returns the output."""
    imperative = net(X)
    with warnings.catch_warnings():
        # The chapter's network is an nn.Sequential; Gluon suggests a HybridSequential.
        warnings.filterwarnings("ignore", "All children of this Sequential", UserWarning)
        net.hybridize()
    hybridized = net(X)
    assert imperative.shape == hybridized.shape
    return hybridized


def residual_output_shape(input_channels, num_channels, use_1x1conv, strides, input_shape_nchw):
    # Gluon infers the input channels at the first call: input_channels is the data's.
    assert input_shape_nchw[1] == input_channels
    with numpy_mode():
        blk = d2l.Residual(num_channels, use_1x1conv=use_1x1conv, strides=strides)
        blk.initialize()
        X = np.random.uniform(size=input_shape_nchw)
        assert isinstance(X, np.ndarray)
        return tuple(_run(blk, X).shape)


def block_output_shape(block_name, arguments, input_shape_nchw):
    """The exercises' blocks as the chapter's readers build them: ``d2l.<block_name>(**arguments)``,
    initialised and called on a random NCHW batch (Gluon infers the input channels), in NumPy mode."""
    with numpy_mode():
        blk = getattr(d2l, block_name)(**arguments)
        blk.initialize()
        X = np.random.uniform(size=input_shape_nchw)
        return tuple(_run(blk, X).shape)


def chapter_net(resnet_block=d2l.resnet_block):
    """The chapter's network, built as its cells build it (b1, then the stages and the head);
    ``resnet_block``: d2l's, or the chapter's own above."""
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


def chapter_net_output_shapes(input_shape_nchw):
    with numpy_mode():
        shapes = []
        net = chapter_net()
        X = np.random.uniform(size=input_shape_nchw)
        net.initialize()
        for layer in net:
            X = layer(X)
            print(layer.name, 'output shape:\t', X.shape)
            shapes.append(tuple(X.shape))
        assert isinstance(X, np.ndarray)
        # b1 is the first four layers; the global pool's (N, C, 1, 1) is reported flattened.
        shapes = shapes[3:8] + [shapes[8][:2], shapes[9]]
        assert tuple(_run(net, np.random.uniform(size=input_shape_nchw)).shape) == shapes[-1]
    return shapes


def built_net(book=False):
    """The chapter's Sequential above, or the book's own code (resnet_mx.reference), weights created."""
    from resnet_mx import reference

    model = reference.chapter_net() if book else chapter_net()
    model.initialize()
    model(mx.nd.zeros((1, 1, 28, 28)))  # Gluon infers the shapes at the first call
    return model


def call_resnet18_with_other_layout(shape_nchw):
    n, c, h, w = shape_nchw
    with numpy_mode():
        net = d2l.resnet18(in_channels=c)
        return net(np.zeros((n, h, w, c)))


def training_cell(num_epochs=1, batch_size=32, resize=96, subset=64, test_subset=32):
    """The chapter's training cell on ``subset`` synthetic examples: (net, train_ch6's history).

    The chapter trains 10 epochs on all of Fashion-MNIST (lr 0.05, batch 256, resize 96);
    that takes hours on two CPU cores, so the epochs, batch and data are the arguments.
    """
    with numpy_mode():
        net = chapter_net()
        lr = 0.05
        train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size, resize=resize, subset=subset,
                                                            test_subset=test_subset, synthetic=True)
        history = d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())
    return net, history


#: Whether the chapter's network computes the oracle's function (Gluon's layers as resnet_mx sets
#: them up pad symmetrically and normalise with the project's constants): its logits are compared.
COMPUTES_THE_ORACLES_FUNCTION = True
# No bfloat16_round_trip: MXNet casts to bfloat16 only inside AMP's graphs (test_precision marks its test).
