"""The chapter's TensorFlow code (d2l-en, chapter_convolutional-modern/resnet.md), run against
``resnet_tf`` in place of ``d2l``: NHWC tensors, ``Residual(num_channels, ...)``,
``ResnetBlock(num_channels, num_residuals, first_block)`` and the chapter's ``net()``, built
from ``resnet_tf``'s plain layers as the chapter writes it (the blocks' default ``conv=``: no fast paths).
The training cell trains on a small synthetic subset (:func:`training_cell`)."""
import tensorflow as tf

import resnet_tf as d2l
from resnet_tf import Residual, ResnetBlock


def _nchw(shape):
    return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape)


def _nhwc(shape_nchw):
    n, c, h, w = shape_nchw
    return (n, h, w, c)


def residual_output_shape(input_channels, num_channels, use_1x1conv, strides, input_shape_nchw):
    assert input_shape_nchw[1] == input_channels
    blk = Residual(num_channels, use_1x1conv=use_1x1conv, strides=strides)
    X = tf.random.normal(_nhwc(input_shape_nchw))
    Y = blk(X)
    return _nchw(tuple(Y.shape))


def block_output_shape(block_name, arguments, input_shape_nchw):
    """The exercises' blocks as a reader writes them: ``d2l.<block_name>(**arguments)`` (Keras infers
    the input channels), on a random NHWC batch; the output shape, NCHW."""
    blk = getattr(d2l, block_name)(**arguments)
    X = tf.random.normal(_nhwc(input_shape_nchw))
    Y = blk(X)
    return _nchw(tuple(Y.shape))


def net():
    # The chapter's function, verbatim: b1 is plain Keras ('same' padding, Keras' BatchNorm),
    # b2-b5 are resnet_tf's ResnetBlock. 'same' changes no shape at 224 x 224.
    return tf.keras.Sequential([
        tf.keras.layers.Conv2D(64, kernel_size=7, strides=2, padding='same'),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.Activation('relu'),
        tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same'),
        ResnetBlock(64, 2, first_block=True),
        ResnetBlock(128, 2),
        ResnetBlock(256, 2),
        ResnetBlock(512, 2),
        tf.keras.layers.GlobalAvgPool2D(),
        tf.keras.layers.Dense(units=10)])


def chapter_net_output_shapes(input_shape_nchw):
    X = tf.random.uniform(shape=_nhwc(input_shape_nchw))
    shapes = []
    layers = net().layers
    # b1 is the chapter's first four layers; the loop prints each, we keep b1's end.
    for index, layer in enumerate(layers):
        X = layer(X)
        if index >= 3:
            shapes.append(_nchw(tuple(X.shape)))
    return shapes


def built_net(book=False):
    """The chapter's Sequential above, or the book's own code (resnet_tf.reference), weights created."""
    from resnet_tf import reference

    model = reference.net() if book else net()
    model.build((None, None, None, 1))
    return model


def call_resnet18_with_other_layout(shape_nchw):
    net = d2l.resnet18()
    return net(tf.zeros(shape_nchw))


def training_cell(num_epochs=1, batch_size=32, resize=96, subset=64, test_subset=32):
    """The chapter's training cell on ``subset`` synthetic examples: (net, train_ch6's history).

    The chapter trains 10 epochs on all of Fashion-MNIST (lr 0.05, batch 256, resize 96);
    that takes hours on two CPU cores, so the epochs, batch and data are the arguments. The
    chapter passes ``net`` itself, which ``train_ch6`` calls; here the network it builds, to
    return it.
    """
    model = net()
    lr = 0.05
    train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size, resize=resize, subset=subset,
                                                        test_subset=test_subset, synthetic=True)
    history = d2l.train_ch6(model, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())
    return model, history


#: Whether the chapter's network computes the oracle's function: not in TensorFlow (its b1's
#: padding='same' pads asymmetrically, and Keras' BatchNorm has other constants).
COMPUTES_THE_ORACLES_FUNCTION = False


def bfloat16_round_trip(values):
    """float32 -> the framework's bfloat16 -> float32 (test_precision holds the oracle's rounding to it)."""
    return tf.cast(tf.cast(values, tf.bfloat16), tf.float32).numpy()
