"""The chapter's own MXNet (Gluon) code, run against ``resnet_mx`` in place of ``d2l``.

The blocks are built and called exactly as the chapter does (deferred shapes, then
``initialize()``), each once imperatively and once hybridized, and must agree.
"""
import mxnet as mx
from mxnet import nd
from mxnet.gluon import nn

import resnet_mx as d2l


def _run(net, X):
    """The chapter's call on an initialised net, imperative and hybridized; returns the output."""
    imperative = net(X)
    net.hybridize()
    hybridized = net(X)
    assert imperative.shape == hybridized.shape
    return hybridized


def residual_output_shape(input_channels, num_channels, use_1x1conv, strides, input_shape_nchw):
    # Gluon infers the input channels at the first call: input_channels is the data's.
    assert input_shape_nchw[1] == input_channels
    blk = d2l.Residual(num_channels, use_1x1conv=use_1x1conv, strides=strides)
    blk.initialize()
    X = nd.random.uniform(shape=input_shape_nchw)
    return tuple(_run(blk, X).shape)


def chapter_net_output_shapes(input_shape_nchw):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
            nn.BatchNorm(), nn.Activation('relu'),
            nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(d2l.resnet_block(64, 2, first_block=True),
            d2l.resnet_block(128, 2),
            d2l.resnet_block(256, 2),
            d2l.resnet_block(512, 2))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))

    X = nd.random.uniform(shape=input_shape_nchw)
    net.initialize()
    shapes = []
    for i, layer in enumerate(net):
        X = layer(X)
        print(layer.name, 'output shape:\t', X.shape)
        if i >= 3:  # b1 is the first four layers; the global pool is reported flattened
            shapes.append(tuple(X.shape[:2]) if i == 8 else tuple(X.shape))
    assert tuple(_run(net, nd.random.uniform(shape=input_shape_nchw)).shape) == shapes[-1]
    return shapes


def call_resnet18_with_other_layout(shape_nchw):
    n, c, h, w = shape_nchw
    net = d2l.resnet18(in_channels=c)
    return net(nd.zeros((n, h, w, c), ctx=mx.cpu()))
