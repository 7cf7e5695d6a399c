"""The chapter's PyTorch code (d2l-en, chapter_convolutional-modern/resnet.md), run against
``resnet_torch`` in place of ``d2l``: NCHW tensors, ``Residual(input_channels, num_channels,
...)``, ``resnet_block(...)`` returning a list, and the chapter's ``nn.Sequential`` of b1..b5,
built from ``resnet_torch``'s plain layers as the chapter writes it (no fast paths bound in).
The training cell trains on a small synthetic subset (:func:`training_cell`)."""
import torch
from torch import nn

import resnet_torch as d2l
from resnet_torch import Residual, resnet_block


def residual_output_shape(input_channels, num_channels, use_1x1conv, strides, input_shape_nchw):
    blk = Residual(input_channels, num_channels, use_1x1conv=use_1x1conv, strides=strides)
    X = torch.rand(*input_shape_nchw)
    Y = blk(X)
    return tuple(Y.shape)


def block_output_shape(block_name, arguments, input_shape_nchw):
    """The exercises' blocks as a reader writes them: ``d2l.<block_name>(input_channels, **arguments)``
    (PyTorch's blocks take the input channels first), on a random batch; the NCHW output shape."""
    blk = getattr(d2l, block_name)(input_channels=input_shape_nchw[1], **arguments)
    X = torch.rand(*input_shape_nchw)
    Y = blk(X)
    return tuple(Y.shape)


def net():
    # The chapter's assembly, verbatim.
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5,
                         nn.AdaptiveAvgPool2d((1, 1)),
                         nn.Flatten(), nn.Linear(512, 10))


def chapter_net_output_shapes(input_shape_nchw):
    X = torch.rand(size=input_shape_nchw)
    shapes = []
    for layer in net():
        X = layer(X)
        # The chapter prints the pool's (N, 512, 1, 1) and then Flatten's (N, 512); keep the latter.
        if not isinstance(layer, nn.AdaptiveAvgPool2d):
            shapes.append(tuple(X.shape))
    return shapes


def built_net(book=False):
    """The chapter's Sequential above, or the book's own code (resnet_torch.reference), weights created."""
    from resnet_torch import reference

    return reference.chapter_net() if book else net()


def call_resnet18_with_other_layout(shape_nchw):
    net = d2l.resnet18()
    n, c, h, w = shape_nchw
    return net(torch.zeros(n, h, w, c))


def training_cell(num_epochs=1, batch_size=32, resize=96, subset=64, test_subset=32):
    """The chapter's training cell on ``subset`` synthetic examples: (net, train_ch6's history).

    The chapter trains 10 epochs on all of Fashion-MNIST (lr 0.05, batch 256, resize 96);
    that takes hours on two CPU cores, so the epochs, batch and data are the arguments.
    """
    model = net()
    lr = 0.05
    train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size, resize=resize, subset=subset,
                                                        test_subset=test_subset, synthetic=True)
    history = d2l.train_ch6(model, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())
    return model, history


#: Whether the chapter's network computes the oracle's function (PyTorch pads symmetrically and its
#: BatchNorm has the project's constants): its logits are compared with the oracle's.
COMPUTES_THE_ORACLES_FUNCTION = True


def bfloat16_round_trip(values):
    """float32 -> the framework's bfloat16 -> float32 (test_precision holds the oracle's rounding to it)."""
    return torch.from_numpy(values).bfloat16().float().numpy()
