"""ResNet in TensorFlow/Keras 3: the chapter's blocks and network, built from :mod:`common.spec`.

Where a Keras layer computes another function than the other backends (``padding='same'``,
Keras' BatchNorm, a max pool that skips NaN), the chapter's code calls a helper of
:mod:`resnet_tf.kernels` by name. A network is built from ``kernels.PLAIN`` or ``kernels.FAST``
(:mod:`common.fastpaths`): the blocks take their convolution as ``conv=``.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, List, Mapping, Tuple

import keras
import numpy as np
import tensorflow as tf

from common.fastpaths import plain_layers
from common.layout import from_canonical_layout, to_canonical_layout
from common.naming import canonical_names, is_residual_block, parameter_shapes
from common.spec import ResNetSpec, check_input_shape, get_spec, iter_blocks
from common.weights import check_weights

from . import kernels
from .data import to_numpy, to_tensor
from .kernels import batch_norm, conv2d

__all__ = ["DATA_FORMAT", "Residual", "ResnetBlock", "resnet_block", "Bottleneck", "ResNeXtBlock", "PreActResidual",
           "PreActBottleneck", "BLOCK_BUILDERS", "ResNet", "resnet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "resnext50_32x4d", "count_parameters", "architecture", "canonical_variables",
           "export_weights", "import_weights", "forward", "trace_shapes"]

#: The layout the network takes: channels last, TensorFlow's native one.
DATA_FORMAT = "NHWC"


class Residual(keras.layers.Layer):
    """The Residual block of ResNet."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, bias=True, norm_shortcut=False, conv=conv2d,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.conv1 = conv(num_channels, kernel_size=3, strides=strides, padding=1, use_bias=bias)
        self.bn1 = batch_norm()
        self.conv2 = conv(num_channels, kernel_size=3, padding=1, use_bias=bias)
        self.bn2 = batch_norm()
        if use_1x1conv:  # the chapter's conv3, under torchvision's name
            self.downsample = _projection(num_channels, strides, bias=bias, norm=norm_shortcut, conv=conv)
        else:
            self.downsample = None

    def build(self, input_shape):
        # From the shapes, not by tracing call symbolically (Keras' default): much faster.
        channels = input_shape[-1]
        _build((self.conv1, channels), (self.bn1, self.num_channels), (self.conv2, self.num_channels),
               (self.bn2, self.num_channels), (self.downsample, channels))

    def call(self, X, training=False):
        Y = keras.activations.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.downsample is not None:
            X = self.downsample(X, training=training)
        return keras.activations.relu(Y + X)


class ResnetBlock(keras.layers.Layer):
    """The chapter's ``ResnetBlock(num_channels, num_residuals, first_block=False)``."""

    def __init__(self, num_channels, num_residuals, first_block=False, **kwargs):
        super().__init__(**kwargs)
        self.residual_layers = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                self.residual_layers.append(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                self.residual_layers.append(Residual(num_channels))

    def call(self, X, training=False):
        for layer in self.residual_layers:
            X = layer(X, training=training)
        return X


def resnet_block(num_channels, num_residuals, first_block=False):
    """The chapter's stage: ``num_residuals`` blocks, the first one halving H and W."""
    return ResnetBlock(num_channels, num_residuals, first_block=first_block)


# --- the chapter's exercises: deeper networks, other blocks, other styles ----------------------

def _projection(num_channels, strides=1, *, bias=True, norm=False, conv=conv2d):
    """The shortcut's strided 1x1 convolution (``downsample.0``), with a BatchNorm after it
    (``downsample.1``) where ``norm`` is set (torchvision's style)."""
    layers = [conv(num_channels, kernel_size=1, strides=strides, use_bias=bias)]
    if norm:
        layers.append(batch_norm())
    return keras.Sequential(layers)


def _build(*layers_and_channels):
    """Build each ``(layer, input channels)`` (None: no layer) from its NHWC shape: a block's
    ``build`` without Keras' default, a symbolic trace of ``call``, which is much slower."""
    for layer, channels in layers_and_channels:
        if layer is not None:
            layer.build((None, None, None, channels))


class Bottleneck(keras.layers.Layer):
    """The bottleneck block of ResNet-50 and deeper: 1x1 convolution down to ``bot_channels``
    (default ``num_channels // 4``), 3x3 convolution (with the stride, in ``groups`` groups), 1x1
    convolution up to ``num_channels``, each followed by BatchNorm; ReLU after the first two and
    after the addition of the shortcut."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, bot_channels=None, groups=1, bias=True,
                 norm_shortcut=False, conv=conv2d, **kwargs):
        super().__init__(**kwargs)
        bot_channels = num_channels // 4 if bot_channels is None else bot_channels
        self.num_channels, self.bot_channels = num_channels, bot_channels
        self.conv1 = conv(bot_channels, kernel_size=1, use_bias=bias)
        self.bn1 = batch_norm()
        self.conv2 = conv(bot_channels, kernel_size=3, strides=strides, padding=1, groups=groups, use_bias=bias)
        self.bn2 = batch_norm()
        self.conv3 = conv(num_channels, kernel_size=1, use_bias=bias)
        self.bn3 = batch_norm()
        if use_1x1conv:
            self.downsample = _projection(num_channels, strides, bias=bias, norm=norm_shortcut, conv=conv)
        else:
            self.downsample = None

    def build(self, input_shape):
        channels, bot, out = input_shape[-1], self.bot_channels, self.num_channels
        _build((self.conv1, channels), (self.bn1, bot), (self.conv2, bot), (self.bn2, bot), (self.conv3, bot),
               (self.bn3, out), (self.downsample, channels))

    def call(self, X, training=False):
        Y = keras.activations.relu(self.bn1(self.conv1(X), training=training))
        Y = keras.activations.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.downsample is not None:
            X = self.downsample(X, training=training)
        return keras.activations.relu(Y + X)


class ResNeXtBlock(Bottleneck):
    """The ResNeXt block, with the book's signature: ``bot_channels = int(round(num_channels *
    bot_mul))`` and a 3x3 convolution in groups of ``groups`` channels each (``bot_channels //
    groups`` groups). A :class:`Bottleneck` otherwise; unlike the book's block (``conv4`` and
    ``bn4``), its shortcut follows the style: a BatchNorm after the 1x1 convolution only with
    ``norm_shortcut=True``."""

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1, *, bias=True,
                 norm_shortcut=False, conv=conv2d, **kwargs):
        bot_channels = int(round(num_channels * bot_mul))
        super().__init__(num_channels, use_1x1conv, strides, bot_channels=bot_channels,
                         groups=bot_channels // groups, bias=bias, norm_shortcut=norm_shortcut, conv=conv, **kwargs)


class PreActResidual(keras.layers.Layer):
    """The pre-activation residual block (He et al. 2016): BatchNorm, ReLU, convolution, twice; the
    shortcut is the input itself, or the 1x1 convolution of the pre-activated input. No ReLU after
    the addition."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, bias=True, conv=conv2d, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.bn1 = batch_norm()
        self.conv1 = conv(num_channels, kernel_size=3, strides=strides, padding=1, use_bias=bias)
        self.bn2 = batch_norm()
        self.conv2 = conv(num_channels, kernel_size=3, padding=1, use_bias=bias)
        if use_1x1conv:
            self.downsample = _projection(num_channels, strides, bias=bias, conv=conv)
        else:
            self.downsample = None

    def build(self, input_shape):
        channels, out = input_shape[-1], self.num_channels
        _build((self.bn1, channels), (self.conv1, channels), (self.bn2, out), (self.conv2, out),
               (self.downsample, channels))

    def call(self, X, training=False):
        A = keras.activations.relu(self.bn1(X, training=training))
        Y = self.conv1(A)
        Y = self.conv2(keras.activations.relu(self.bn2(Y, training=training)))
        if self.downsample is not None:
            X = self.downsample(A, training=training)
        return Y + X


class PreActBottleneck(keras.layers.Layer):
    """The pre-activation bottleneck block: BatchNorm, ReLU, convolution for each of the
    :class:`Bottleneck`'s three convolutions; shortcut as in :class:`PreActResidual`."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, *, bot_channels=None, groups=1, bias=True,
                 conv=conv2d, **kwargs):
        super().__init__(**kwargs)
        bot_channels = num_channels // 4 if bot_channels is None else bot_channels
        self.num_channels, self.bot_channels = num_channels, bot_channels
        self.bn1 = batch_norm()
        self.conv1 = conv(bot_channels, kernel_size=1, use_bias=bias)
        self.bn2 = batch_norm()
        self.conv2 = conv(bot_channels, kernel_size=3, strides=strides, padding=1, groups=groups, use_bias=bias)
        self.bn3 = batch_norm()
        self.conv3 = conv(num_channels, kernel_size=1, use_bias=bias)
        if use_1x1conv:
            self.downsample = _projection(num_channels, strides, bias=bias, conv=conv)
        else:
            self.downsample = None

    def build(self, input_shape):
        channels, bot = input_shape[-1], self.bot_channels
        _build((self.bn1, channels), (self.conv1, channels), (self.bn2, bot), (self.conv2, bot), (self.bn3, bot),
               (self.conv3, bot), (self.downsample, channels))

    def call(self, X, training=False):
        A = keras.activations.relu(self.bn1(X, training=training))
        Y = self.conv1(A)
        Y = self.conv2(keras.activations.relu(self.bn2(Y, training=training)))
        Y = self.conv3(keras.activations.relu(self.bn3(Y, training=training)))
        if self.downsample is not None:
            X = self.downsample(A, training=training)
        return Y + X


#: :attr:`common.spec.ResNetSpec.block_kind` -> one block from its :class:`common.spec.BlockConfig`,
#: the network's spec and its :class:`common.fastpaths.Layers`.
BLOCK_BUILDERS = {
    "basic": lambda block, spec, layers: Residual(
        block.out_channels, block.use_1x1conv, block.stride, bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut,
        conv=layers.conv),
    "bottleneck": lambda block, spec, layers: Bottleneck(
        block.out_channels, block.use_1x1conv, block.stride, bot_channels=block.channels, groups=block.groups,
        bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut, conv=layers.conv),
    "preact_basic": lambda block, spec, layers: PreActResidual(
        block.out_channels, block.use_1x1conv, block.stride, bias=spec.conv_bias, conv=layers.conv),
    "preact_bottleneck": lambda block, spec, layers: PreActBottleneck(
        block.out_channels, block.use_1x1conv, block.stride, bot_channels=block.channels, groups=block.groups,
        bias=spec.conv_bias, conv=layers.conv),
}


class ResNet(keras.Model):
    """ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..4, fc).

    ``arch`` is a name of :data:`common.spec.RESNET_SPECS`, a spec, or the book's tuple of
    ``(num_residuals, num_channels)`` pairs; ``style`` one of :data:`common.spec.STYLES`;
    ``layers`` ``kernels.PLAIN`` or ``kernels.FAST`` (:mod:`common.fastpaths`). A
    pre-activation network has a final BatchNorm (``norm``) and ReLU before pooling.
    The stem is the spec's (``get_spec(arch, stem="small")``: 3x3 convolution, no ``maxpool``).
    """

    def __init__(self, arch="resnet18", num_classes=10, in_channels=1, style="d2l", layers=kernels.PLAIN, **kwargs):
        super().__init__(**kwargs)
        spec = get_spec(arch, style)
        parameter_shapes(spec, in_channels, num_classes)  # validates in_channels and num_classes
        self.spec, self.arch, self.style = spec, spec.name, spec.style
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = layers.conv(spec.stem_channels, kernel_size=spec.stem_kernel, strides=spec.stem_stride,
                                 padding=spec.stem_padding, use_bias=spec.conv_bias)
        self.bn1 = batch_norm()
        if spec.max_pool:
            self.maxpool = layers.max_pool(spec.pool_kernel, spec.pool_stride, spec.pool_padding)
        else:  # the small stem (common.spec.STEMS): stage 1 at the input's size
            self.maxpool = None
        stages: Dict[int, list] = {}
        for block in iter_blocks(spec):
            stages.setdefault(block.stage, []).append(BLOCK_BUILDERS[spec.block_kind](block, spec, layers))
        for number, blocks in stages.items():
            setattr(self, f"layer{number}", blocks)
        self.stage_names = [f"layer{number}" for number in stages]
        self.norm = batch_norm() if spec.preact else None
        self.avgpool = layers.global_pool()
        self.fc = keras.layers.Dense(num_classes)
        # Every variable now (no shape depends on height and width): weights import before a batch.
        self.build((None, None, None, in_channels))

    def build(self, input_shape):
        spec = self.spec
        self.conv1.build(input_shape)
        self.bn1.build((None, None, None, spec.stem_channels))
        for block in iter_blocks(spec):
            getattr(self, f"layer{block.stage}")[block.index].build((None, None, None, block.in_channels))
        if self.norm is not None:
            self.norm.build((None, None, None, spec.feature_channels))
        self.fc.build((None, spec.feature_channels))

    def _stem(self, x, training):
        x = keras.activations.relu(self.bn1(self.conv1(x), training=training))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

    def _stage(self, blocks, x, training):
        for block in blocks:
            x = block(x, training=training)
        return x

    def _pool(self, x, training):
        if self.norm is not None:  # pre-activation: the last block's output is not yet normalised
            x = keras.activations.relu(self.norm(x, training=training))
        return self.avgpool(x)

    def stages(self):
        """(name, function(x, training)) for each stage of :func:`common.spec.stage_output_shapes`."""
        layers = [(name, partial(self._stage, getattr(self, name))) for name in self.stage_names]
        return [("stem", self._stem)] + layers + [("pool", self._pool), ("fc", lambda x, training: self.fc(x))]

    def __call__(self, inputs, *args, **kwargs):
        # Checked here, not in call: Keras wraps what call raises in a many-line report.
        check_input_shape(inputs.shape if hasattr(inputs, "shape") else np.shape(inputs), self.in_channels, DATA_FORMAT)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=False):
        x = inputs
        for _, run in self.stages():
            x = run(x, training)
        return x


def resnet(arch="resnet18", num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    """The network ``arch`` (see :class:`ResNet`) in ``style``, variables built, from ``kernels.FAST``
    unless :func:`common.fastpaths.plain_layers` (``plain``) says ``kernels.PLAIN``."""
    layers = kernels.PLAIN if plain_layers(plain) else kernels.FAST
    return ResNet(arch, num_classes=num_classes, in_channels=in_channels, style=style, layers=layers)


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


def count_parameters(net) -> int:
    """Number of trainable scalars (BatchNorm moving statistics are state, not counted)."""
    return sum(int(np.prod(v.shape)) for v in net.trainable_variables)


def architecture(net) -> Tuple[ResNetSpec, int, int]:
    """(spec, in_channels, num_classes) of a ResNet (its spec with its style), or of the chapter's
    Sequential ResNet-18."""
    if isinstance(net, ResNet):
        return net.spec, net.in_channels, net.num_classes
    units = list(_units(net))
    if len(units) < 2:
        raise ValueError(f"{type(net).__name__} is not a ResNet: it has no convolution or no dense layer")
    return get_spec("resnet18"), int(units[0]["kernel"].shape[2]), int(units[-1]["kernel"].shape[1])


def _sublayers(layer) -> Dict[str, keras.layers.Layer]:
    """A layer's own sublayers by attribute name (a list's items as ``name.0``, ...), in assignment
    order; a Sequential's by position (Keras has no public walk that names them)."""
    if isinstance(layer, keras.Sequential):
        return {str(index): sublayer for index, sublayer in enumerate(layer.layers)}
    named = {}
    for name, value in vars(layer).items():
        if name.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            named[name] = value
        elif isinstance(value, (list, tuple)):
            named.update((f"{name}.{i}", item) for i, item in enumerate(value) if isinstance(item, keras.layers.Layer))
    return named


def _variables(layer, prefix="") -> Dict[str, tf.Variable]:
    """A layer's variables by structural name within it (``conv1.kernel``, ``downsample.0.kernel``)."""
    sublayers = _sublayers(layer)
    if not sublayers:
        return {prefix + variable.name: variable for variable in layer.weights}
    named = {}
    for name, sublayer in sublayers.items():
        named.update(_variables(sublayer, f"{prefix}{name}."))
    return named


def _units(layer) -> Iterator[Dict[str, tf.Variable]]:
    """The net's layers with weights and its residual blocks (what has a conv1 and a conv2), in order,
    each as its structural names; see :func:`common.naming.canonical_names`."""
    sublayers = _sublayers(layer)
    if sublayers and not is_residual_block(sublayers):
        for sublayer in sublayers.values():
            yield from _units(sublayer)
        return
    variables = _variables(layer)
    if variables:
        yield variables


def _canonical_shape(variable) -> Tuple[int, ...]:
    shape = tuple(variable.shape)
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]


def canonical_variables(net) -> Dict[str, tf.Variable]:
    """Canonical name -> the net's variable, in spec order: a :class:`ResNet`, the chapter's
    Sequential of this or the book's ``Residual``, by :func:`common.naming.canonical_names`."""
    return canonical_names(list(_units(net)), *architecture(net), shape=_canonical_shape)


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 NumPy copy in canonical layout, in spec order."""
    return {name: to_canonical_layout(variable.numpy()) for name, variable in canonical_variables(net).items()}


def import_weights(net, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes."""
    spec, in_channels, num_classes = architecture(net)
    check_weights(weights, spec, in_channels=in_channels, num_classes=num_classes)
    for name, variable in canonical_variables(net).items():
        variable.assign(from_canonical_layout(weights[name]))


def forward(net, images, training=False) -> np.ndarray:
    """Float32 logits (NumPy) for an NCHW NumPy batch; ``training=True`` uses and updates batch statistics."""
    check_input_shape(np.shape(images), architecture(net)[1], "NCHW")
    return to_numpy(tf.cast(net(to_tensor(images), training=training), tf.float32))


def trace_shapes(net, images) -> List[Tuple[str, tuple]]:
    """(stage name, NCHW output shape) through stem, layer1..4, pool and fc, in eval mode."""
    check_input_shape(np.shape(images), net.in_channels, "NCHW")
    x = to_tensor(images)
    shapes = []
    for name, run in net.stages():
        x = run(x, False)
        shapes.append((name, to_numpy(x).shape))
    return shapes
