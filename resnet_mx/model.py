"""ResNet in MXNet Gluon: the chapter's blocks and network, built from :mod:`common.spec`, and weights I/O.

Gluon's layers under torchvision's names (``conv1``, ``bn1``, ``layer2.0.downsample.0``, ``fc``), as
``HybridBlock``s in either array mode (legacy ``mx.nd`` or NumPy, ``npx.set_np()``). :mod:`resnet_mx.kernels`
supplies the BatchNorm that agrees with PyTorch's and the fast layers.
Fast paths: ``layers=kernels.FAST`` (blocks: ``conv=``), a constructor argument, as :mod:`common.fastpaths` says.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array

from common.fastpaths import plain_layers
from common.naming import canonical_names, is_residual_block, parameter_shapes
from common.spec import ResNetSpec, check_input_shape, get_spec, iter_blocks
from common.weights import check_weights

from . import kernels
from .kernels import batch_norm, bfloat16_graph, block_conv, forward_as_pytorch, tell_input_size, with_batch_statistics

__all__ = [
    "DATA_FORMAT",
    "Residual",
    "resnet_block",
    "Bottleneck",
    "ResNeXtBlock",
    "PreActResidual",
    "PreActBottleneck",
    "BLOCK_BUILDERS",
    "ResNet",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "count_parameters",
    "architecture",
    "canonical_variables",
    "export_weights",
    "import_weights",
    "forward",
    "trace_shapes",
]

#: The layout the network takes.
DATA_FORMAT = "NCHW"


class Residual(nn.HybridBlock):
    """The Residual block of ResNet models."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, in_channels=0, *, bias=True, norm_shortcut=False,
                 conv=nn.Conv2D, **kwargs):
        super().__init__(**kwargs)
        # Registered in the canonical parameter order: conv1, bn1, conv2, bn2, downsample.
        # in_channels (0: inferred at the first call, as in the chapter) lets ResNet create its weights at once.
        # conv: the class of the block's own convolutions (resnet_mx.kernels.FAST's for the fast paths).
        self.conv1 = conv(num_channels, kernel_size=3, padding=1, strides=strides, use_bias=bias,
                          in_channels=in_channels)
        self.bn1 = batch_norm(num_channels)
        self.conv2 = conv(num_channels, kernel_size=3, padding=1, use_bias=bias, in_channels=num_channels)
        self.bn2 = batch_norm(num_channels)
        self.relu = nn.Activation("relu")
        if use_1x1conv:  # the chapter's conv3, under torchvision's name
            self.downsample = _projection(num_channels, strides, in_channels, bias=bias, norm=norm_shortcut)
        else:
            self.downsample = None

    def hybrid_forward(self, F, X):
        Y = self.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return self.relu(Y + X)


def resnet_block(num_channels, num_residuals, first_block=False):
    blk = nn.HybridSequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk


# --- the chapter's exercises: deeper networks, other blocks, other styles ----------------------

def _projection(num_channels, strides=1, in_channels=0, *, bias=True, norm=False):
    """The shortcut's strided 1x1 convolution (``downsample.0``), with a BatchNorm after it
    (``downsample.1``) where ``norm`` is set (torchvision's style). Gluon's convolution whatever the
    block's ``conv``: it has no fast path (:data:`resnet_mx.kernels.FAST`)."""
    shortcut = nn.HybridSequential()
    shortcut.add(nn.Conv2D(num_channels, kernel_size=1, strides=strides, use_bias=bias, in_channels=in_channels))
    if norm:
        shortcut.add(batch_norm(num_channels))
    return shortcut


class Bottleneck(nn.HybridBlock):
    """The bottleneck block of ResNet-50 and deeper: 1x1 convolution down to ``bot_channels``
    (default ``num_channels // 4``), 3x3 convolution (with the stride, in ``groups`` groups), 1x1
    convolution up to ``num_channels``, each followed by BatchNorm; ReLU after the first two and
    after the addition of the shortcut."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, in_channels=0, *, bot_channels=None, groups=1,
                 bias=True, norm_shortcut=False, conv=nn.Conv2D, **kwargs):
        super().__init__(**kwargs)
        bot_channels = num_channels // 4 if bot_channels is None else bot_channels
        self.conv1 = conv(bot_channels, kernel_size=1, use_bias=bias, in_channels=in_channels)
        self.bn1 = batch_norm(bot_channels)
        self.conv2 = conv(bot_channels, kernel_size=3, padding=1, strides=strides, groups=groups, use_bias=bias,
                          in_channels=bot_channels)
        self.bn2 = batch_norm(bot_channels)
        self.conv3 = conv(num_channels, kernel_size=1, use_bias=bias, in_channels=bot_channels)
        self.bn3 = batch_norm(num_channels)
        self.relu = nn.Activation("relu")
        if use_1x1conv:
            self.downsample = _projection(num_channels, strides, in_channels, bias=bias, norm=norm_shortcut)
        else:
            self.downsample = None

    def hybrid_forward(self, F, X):
        Y = self.relu(self.bn1(self.conv1(X)))
        Y = self.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return self.relu(Y + X)


class ResNeXtBlock(Bottleneck):
    """The ResNeXt block, with the book's signature: ``bot_channels = int(round(num_channels *
    bot_mul))`` and a 3x3 convolution in groups of ``groups`` channels each (``bot_channels //
    groups`` groups). A :class:`Bottleneck` otherwise; unlike the book's block (``conv4`` and
    ``bn4``), its shortcut follows the style: a BatchNorm after the 1x1 convolution only with
    ``norm_shortcut=True``."""

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1, in_channels=0, *, bias=True,
                 norm_shortcut=False, conv=nn.Conv2D, **kwargs):
        bot_channels = int(round(num_channels * bot_mul))
        super().__init__(num_channels, use_1x1conv, strides, in_channels, bot_channels=bot_channels,
                         groups=bot_channels // groups, bias=bias, norm_shortcut=norm_shortcut, conv=conv, **kwargs)


class PreActResidual(nn.HybridBlock):
    """The pre-activation residual block (He et al. 2016): BatchNorm, ReLU, convolution, twice; the
    shortcut is the input itself, or the 1x1 convolution of the pre-activated input. No ReLU after
    the addition."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, in_channels=0, *, bias=True, conv=nn.Conv2D,
                 **kwargs):
        super().__init__(**kwargs)
        self.bn1 = batch_norm(in_channels)
        self.conv1 = conv(num_channels, kernel_size=3, padding=1, strides=strides, use_bias=bias,
                          in_channels=in_channels)
        self.bn2 = batch_norm(num_channels)
        self.conv2 = conv(num_channels, kernel_size=3, padding=1, use_bias=bias, in_channels=num_channels)
        self.relu = nn.Activation("relu")
        if use_1x1conv:
            self.downsample = _projection(num_channels, strides, in_channels, bias=bias)
        else:
            self.downsample = None

    def hybrid_forward(self, F, X):
        A = self.relu(self.bn1(X))
        Y = self.conv1(A)
        Y = self.conv2(self.relu(self.bn2(Y)))
        if self.downsample is not None:
            X = self.downsample(A)
        return Y + X


class PreActBottleneck(nn.HybridBlock):
    """The pre-activation bottleneck block: BatchNorm, ReLU, convolution for each of the
    :class:`Bottleneck`'s three convolutions; shortcut as in :class:`PreActResidual`."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, in_channels=0, *, bot_channels=None, groups=1,
                 bias=True, conv=nn.Conv2D, **kwargs):
        super().__init__(**kwargs)
        bot_channels = num_channels // 4 if bot_channels is None else bot_channels
        self.bn1 = batch_norm(in_channels)
        self.conv1 = conv(bot_channels, kernel_size=1, use_bias=bias, in_channels=in_channels)
        self.bn2 = batch_norm(bot_channels)
        self.conv2 = conv(bot_channels, kernel_size=3, padding=1, strides=strides, groups=groups, use_bias=bias,
                          in_channels=bot_channels)
        self.bn3 = batch_norm(bot_channels)
        self.conv3 = conv(num_channels, kernel_size=1, use_bias=bias, in_channels=bot_channels)
        self.relu = nn.Activation("relu")
        if use_1x1conv:
            self.downsample = _projection(num_channels, strides, in_channels, bias=bias)
        else:
            self.downsample = None

    def hybrid_forward(self, F, X):
        A = self.relu(self.bn1(X))
        Y = self.conv1(A)
        Y = self.conv2(self.relu(self.bn2(Y)))
        Y = self.conv3(self.relu(self.bn3(Y)))
        if self.downsample is not None:
            X = self.downsample(A)
        return Y + X


#: :attr:`common.spec.ResNetSpec.block_kind` -> one block from its :class:`common.spec.BlockConfig`,
#: the network's spec and its :class:`common.fastpaths.Layers`. A block's convolutions are all of
#: ``layers.conv`` or all Gluon's (:func:`resnet_mx.kernels.block_conv`: MXNet 1.9.1 fails on fast
#: and oneDNN convolutions side by side, so a ResNeXt block, whose grouped 3x3 has no fast path, has none).
BLOCK_BUILDERS = {
    "basic": lambda block, spec, layers: Residual(
        block.out_channels, block.use_1x1conv, block.stride, in_channels=block.in_channels,
        bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut, conv=block_conv(layers, block)),
    "bottleneck": lambda block, spec, layers: Bottleneck(
        block.out_channels, block.use_1x1conv, block.stride, in_channels=block.in_channels,
        bot_channels=block.channels, groups=block.groups, bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut,
        conv=block_conv(layers, block)),
    "preact_basic": lambda block, spec, layers: PreActResidual(
        block.out_channels, block.use_1x1conv, block.stride, in_channels=block.in_channels, bias=spec.conv_bias,
        conv=block_conv(layers, block)),
    "preact_bottleneck": lambda block, spec, layers: PreActBottleneck(
        block.out_channels, block.use_1x1conv, block.stride, in_channels=block.in_channels,
        bot_channels=block.channels, groups=block.groups, bias=spec.conv_bias, conv=block_conv(layers, block)),
}


class ResNet(nn.HybridBlock):
    """ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..4, fc).

    ``arch`` is a name of :data:`common.spec.RESNET_SPECS`, a spec, or the book's tuple of
    ``(num_residuals, num_channels)`` pairs; ``style`` one of :data:`common.spec.STYLES`;
    ``layers`` what its blocks' convolutions and its pools are made with (:data:`resnet_mx.kernels.PLAIN`
    or ``FAST``). A pre-activation network has a final BatchNorm (``norm``) and ReLU before pooling.
    The stem is the spec's (``get_spec(arch, stem="small")``: 3x3 convolution, no ``maxpool``).

    Its running statistics move with a training-mode forward pass and NaNs come out as in PyTorch
    (:func:`resnet_mx.kernels.forward_as_pytorch`).
    """

    #: Whether the graph it traces goes through MXNet's AMP pass, to compute in bfloat16
    #: (:func:`resnet_mx.kernels.use_bfloat16` sets it, for ``precision="bf16"``; see :meth:`_get_graph`).
    bfloat16 = False

    def __init__(self, arch="resnet18", num_classes=10, in_channels=1, style="d2l", layers=kernels.PLAIN, **kwargs):
        super().__init__(**kwargs)
        spec = get_spec(arch, style)
        parameter_shapes(spec, in_channels, num_classes)  # validates in_channels and num_classes
        self.spec, self.arch, self.style = spec, spec.name, spec.style
        self.num_classes, self.in_channels = num_classes, in_channels
        # The stem is Gluon's convolution in both sets of layers: it sees no tiny map (kernels.FAST).
        self.conv1 = nn.Conv2D(spec.stem_channels, kernel_size=spec.stem_kernel, strides=spec.stem_stride,
                               padding=spec.stem_padding, use_bias=spec.conv_bias, in_channels=in_channels)
        self.bn1 = batch_norm(spec.stem_channels)
        self.relu = nn.Activation("relu")
        if spec.max_pool:
            self.maxpool = layers.max_pool(pool_size=spec.pool_kernel, strides=spec.pool_stride,
                                           padding=spec.pool_padding)
        else:  # the small stem (common.spec.STEMS): stage 1 at the input's size
            self.maxpool = None
        stages: Dict[int, List[nn.HybridBlock]] = {}
        for block in iter_blocks(spec):
            stages.setdefault(block.stage, []).append(BLOCK_BUILDERS[spec.block_kind](block, spec, layers))
        for number, blocks in stages.items():
            setattr(self, f"layer{number}", nn.HybridSequential())
            getattr(self, f"layer{number}").add(*blocks)
        self.num_stages = len(stages)
        self.norm = batch_norm(spec.feature_channels) if spec.preact else None
        self.avgpool = layers.global_pool()
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(num_classes, in_units=spec.feature_channels)
        # The input size its fast layers were last told (kernels.tell_input_size); None: none yet.
        self._input_size = None

    def _stem(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

    def _pool(self, x):
        if self.norm is not None:  # pre-activation: the last block's output is not yet normalised
            x = self.relu(self.norm(x))
        return self.flatten(self.avgpool(x))

    def stages(self):
        """(name, function) for each stage of :func:`common.spec.stage_output_shapes`, in order."""
        layers = [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, self.num_stages + 1)]
        return [("stem", self._stem)] + layers + [("pool", self._pool), ("fc", self.fc)]

    @with_batch_statistics
    def hybrid_forward(self, F, x):
        for _, stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x):
        if isinstance(x, mx.nd.NDArray):  # an array, not a symbol of an enclosing block's graph
            check_input_shape(x.shape, self.in_channels, DATA_FORMAT)
        # Built from kernels.FAST, its tiny-map convolutions learn their input sizes first, which the
        # graph Gluon traces does not know, and their paths for that size; from PLAIN, nothing happens.
        tell_input_size(self, x)
        return forward_as_pytorch(self, super().forward, x)

    def _get_graph(self, *args):
        """Gluon's graph of this network (traced once per input size, and again when the fast layers
        drop it), in bf16 (:attr:`bfloat16`) through MXNet's AMP pass before Gluon compiles it
        (:func:`resnet_mx.kernels.bfloat16_graph`). Gluon's own hook: every graph it runs or infers
        shapes with comes from here."""
        if not self._cached_graph:
            inputs, graph = super()._get_graph(*args)
            self._cached_graph = inputs, bfloat16_graph(graph, inputs) if self.bfloat16 else graph
        return self._cached_graph


def resnet(arch="resnet18", num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    """The network ``arch`` (see :class:`ResNet`) in ``style`` with Gluon's default init on the CPU, built from
    :data:`resnet_mx.kernels.FAST` unless :func:`common.fastpaths.plain_layers` (``plain``) says ``PLAIN``."""
    net = ResNet(arch, num_classes, in_channels, style, layers=kernels.PLAIN if plain_layers(plain) else kernels.FAST)
    net.initialize(ctx=mx.cpu())
    return net


def resnet18(num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    return resnet("resnet18", num_classes, in_channels, style, plain)


def resnet34(num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    return resnet("resnet34", num_classes, in_channels, style, plain)


def resnet50(num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    return resnet("resnet50", num_classes, in_channels, style, plain)


def resnet101(num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    return resnet("resnet101", num_classes, in_channels, style, plain)


def resnet152(num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    return resnet("resnet152", num_classes, in_channels, style, plain)


def resnext50_32x4d(num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    return resnet("resnext50_32x4d", num_classes, in_channels, style, plain)


def _parameters(net) -> Dict[str, gluon.Parameter]:
    """Gluon's structural name (``layer1.0.bn1.gamma``) -> Parameter, in registration order."""
    return dict(net._collect_params_with_prefix())


def count_parameters(net) -> int:
    """Number of trainable scalars (BatchNorm running statistics have ``grad_req='null'``)."""
    return sum(int(np.prod(p.shape)) for p in _parameters(net).values() if p.grad_req != "null")


def architecture(net) -> Tuple[ResNetSpec, int, int]:
    """(spec, in_channels, num_classes) of a ResNet (its spec with its style), or of the chapter's
    Sequential ResNet-18."""
    if isinstance(net, ResNet):
        return net.spec, net.in_channels, net.num_classes
    params = list(_parameters(net).values())
    convs = [p for p in params if len(p.shape) == 4]
    dense = [p for p in params if len(p.shape) == 2]
    if not convs or not dense:
        raise ValueError(f"{type(net).__name__} is not a ResNet: it has no convolution or no dense layer")
    if convs[0].shape[1] <= 0 or dense[-1].shape[0] <= 0:  # unknown: 0, or -1 in NumPy mode
        raise ValueError(f"{type(net).__name__} has parameters of unknown shape; call it on one batch first")
    return get_spec("resnet18"), convs[0].shape[1], dense[-1].shape[0]


def _units(block) -> Iterator[Dict[str, gluon.Parameter]]:
    """The net's layers with weights and its residual blocks (what has a conv1 and a conv2), in order,
    each as its Gluon structural names; see :func:`common.naming.canonical_names`."""
    children = block._children  # Gluon 1.x has no public child iterator
    if children and not is_residual_block(children):
        for child in children.values():
            yield from _units(child)
        return
    params = _parameters(block)
    if params:
        yield params


def canonical_variables(net) -> Dict[str, gluon.Parameter]:
    """Canonical name -> the net's Parameter, in spec order: a :class:`ResNet`, the chapter's
    ``Sequential`` of this or the book's ``Residual``, by :func:`common.naming.canonical_names`.
    Shapes not yet inferred pass the check."""
    return canonical_names(list(_units(net)), *architecture(net))


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 NumPy copy (OIHW conv, (out, in) dense), in spec order."""
    return {name: param.data().asnumpy().astype(np.float32, copy=False)
            for name, param in canonical_variables(net).items()}


def import_weights(net, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes."""
    spec, in_channels, num_classes = architecture(net)
    check_weights(weights, spec, in_channels=in_channels, num_classes=num_classes)
    for name, param in canonical_variables(net).items():
        # set_data copies to every context the parameter lives on (or waits for deferred init).
        param.set_data(_array(weights[name]))


def _array(values, ctx=None) -> mx.nd.NDArray:
    """A float32 MXNet array of ``values`` in the active array mode."""
    return (mx.np if is_np_array() else mx.nd).array(np.asarray(values, dtype=np.float32), ctx=ctx, dtype=np.float32)


def _input(net, images) -> mx.nd.NDArray:
    return _array(images, ctx=next(iter(_parameters(net).values())).list_ctx()[0])


def forward(net, images, training=False) -> np.ndarray:
    """Logits (NumPy) for an NCHW NumPy batch; ``training=True`` normalises with batch statistics and
    updates the running ones, as a training step's forward pass does, without any gradient step."""
    x = _input(net, images)
    with autograd.train_mode() if training else autograd.predict_mode():
        return net(x).asnumpy()


def trace_shapes(net, images) -> List[Tuple[str, tuple]]:
    """(stage name, NCHW output shape) through stem, layer1..4, pool and fc, in eval mode."""
    x = _input(net, images)
    check_input_shape(x.shape, net.in_channels, DATA_FORMAT)
    shapes = []
    with autograd.predict_mode():
        for name, stage in net.stages():
            x = stage(x)
            shapes.append((name, tuple(x.shape)))
    return shapes
