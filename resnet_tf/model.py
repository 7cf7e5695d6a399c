"""ResNet-18 in TensorFlow/Keras 3: the chapter's blocks, built from :mod:`common.spec`.

The network takes NHWC batches (TensorFlow's native layout on CPU and GPU) and computes
the same function as the PyTorch and MXNet backends from the same canonical weights. What
Keras does differently by default, and what this module does instead:

* ``padding='same'`` pads stride-2 convolutions and pooling asymmetrically ((0, 1) for a
  3x3/s2 convolution on an even size, where PyTorch pads (1, 1)): every convolution here
  pads explicitly and symmetrically (:class:`_Conv2D`), and so does the max pool
  (:func:`_max_pool`).
* ``keras.layers.BatchNormalization`` uses epsilon 1e-3, momentum 0.99, and updates its
  moving variance with the *biased* batch variance (Keras 3.15,
  ``layers/normalization/batch_normalization.py``: ``ops.moments`` then
  ``moving_variance * momentum + variance * (1 - momentum)``): :class:`_BatchNorm` uses
  epsilon 1e-5 and PyTorch's update, ``running = 0.9 * running + 0.1 * unbiased``.
* Keras counts BatchNorm moving statistics as parameters (11,186,186);
  :func:`count_parameters` counts trainable scalars only (11,178,378), as PyTorch does.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import keras
import numpy as np
import tensorflow as tf

from common.spec import BN_EPSILON, BN_MOMENTUM, check_input_shape, get_spec, iter_blocks, parameter_shapes
from common.weights import check_weights

from .data import to_numpy, to_tensor

__all__ = [
    "DATA_FORMAT",
    "Residual",
    "ResnetBlock",
    "resnet_block",
    "ResNet",
    "resnet",
    "resnet18",
    "count_parameters",
    "export_weights",
    "import_weights",
    "forward",
    "trace_shapes",
]

#: The layout the network takes: channels last, TensorFlow's native (and oneDNN's fast) one.
DATA_FORMAT = "NHWC"


#: Convolutions with at most this many output pixels (per image) or this many input
#: channels run as one matrix product (:func:`_conv_as_matmul`). Measured on a 2-core AVX2
#: CPU: TensorFlow's and XLA's convolution kernels fall to 1-9 GFLOP/s (forward and
#: backward) on 2x2 and 1x1 maps with 256-512 channels (ResNet's last stages at 28 x 28) and
#: on the one-channel 7x7 stem, where a matrix product reaches 20-60.
_MATMUL_MAX_PIXELS = 9
_MATMUL_MAX_CHANNELS = 4


def _tap_sees_input(tap, out_size, in_size, stride, padding):
    return any(0 <= stride * o + tap - padding < in_size for o in range(out_size))


def _conv_as_matmul(x, kernel, stride, padding):
    """Convolution as im2col (strided slices of the padded input) times the kernel matrix.

    The same sums as the convolution. Kernel taps that only ever see padding (8 of 9 on a
    1x1 map) contribute exact zeros and are left out; their gradient is exactly zero too.
    """
    size, _, channels, filters = kernel.shape
    height, width = int(x.shape[1]), int(x.shape[2])
    out_h = (height + 2 * padding - size) // stride + 1
    out_w = (width + 2 * padding - size) // stride + 1
    taps = [
        (i, j)
        for i in range(size)
        if _tap_sees_input(i, out_h, height, stride, padding)
        for j in range(size)
        if _tap_sees_input(j, out_w, width, stride, padding)
    ]
    if padding:
        x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    columns = tf.concat(
        [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :] for i, j in taps],
        axis=-1,
    )
    matrix = tf.reshape(tf.stack([kernel[i, j] for i, j in taps]), [len(taps) * channels, filters])
    outputs = tf.matmul(tf.reshape(columns, [-1, len(taps) * channels]), matrix)
    return tf.reshape(outputs, [-1, out_h, out_w, filters])


class _Conv2D(keras.layers.Layer):
    """A convolution with bias and explicit symmetric zero padding (never 'same').

    ``tf.nn.conv2d`` takes the padding per side, so the padding costs no extra ``tf.pad``
    op; the kernel is HWIO, as in ``keras.layers.Conv2D`` (same variable names). Tiny maps
    and few input channels take the matrix-product path (see :data:`_MATMUL_MAX_PIXELS`).
    """

    def __init__(self, filters, kernel_size, strides=1, padding=0, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.padding = filters, kernel_size, strides, padding

    def build(self, input_shape):
        shape = (self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def _as_matmul(self, shape):
        height, width, channels = shape[1], shape[2], shape[3]
        if height is None or width is None:
            return False
        out_h = (height + 2 * self.padding - self.kernel_size) // self.strides + 1
        out_w = (width + 2 * self.padding - self.kernel_size) // self.strides + 1
        return out_h * out_w <= _MATMUL_MAX_PIXELS or channels <= _MATMUL_MAX_CHANNELS

    def call(self, inputs):
        p = self.padding
        if self._as_matmul(inputs.shape):
            outputs = _conv_as_matmul(inputs, self.kernel, self.strides, p)
        else:
            padding = [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID"
            outputs = tf.nn.conv2d(inputs, self.kernel, self.strides, padding, data_format="NHWC")
        return tf.nn.bias_add(outputs, self.bias, data_format="NHWC")


class _BatchNorm(keras.layers.Layer):
    """BatchNorm with PyTorch's semantics: epsilon 1e-5, momentum 0.1 (PyTorch's convention).

    Normalises with the biased batch variance and updates ``moving_variance`` with the
    unbiased one, as ``torch.nn.BatchNorm2d`` does (Keras' own layer uses the biased one
    for both). Written as plain ops (``tf.nn.moments``, then one multiply-add) rather than
    ``FusedBatchNormV3``: XLA fuses them with the neighbouring bias add, ReLU and residual
    add, where it expands the fused op on its own, in extra passes over the activations
    (8% of a training step at 96 x 96, 16% at 28 x 28, on a 2-core CPU). The gradient is
    automatic differentiation's, the exact BatchNorm gradient.
    """

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=channels, initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=channels, initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=channels, initializer="ones", trainable=False
        )

    def call(self, inputs, training=False):
        if training:
            mean, variance = tf.nn.moments(inputs, axes=[0, 1, 2])  # the biased variance
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), inputs.dtype)
            self.moving_mean.assign((1.0 - BN_MOMENTUM) * self.moving_mean + BN_MOMENTUM * mean)
            self.moving_variance.assign((1.0 - BN_MOMENTUM) * self.moving_variance
                                        + BN_MOMENTUM * variance * (count / (count - 1.0)))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = self.gamma * tf.math.rsqrt(variance + BN_EPSILON)
        return inputs * scale + (self.beta - mean * scale)


def _shape_with_channels(channels):
    return (None, None, None, channels)


def _max_pool(inputs, kernel, stride, padding):
    """Max pooling with -inf padding on both sides, as PyTorch pads ('same' is asymmetric).

    Computed separably, as running maxima of strided slices (along the width, then the
    height): under XLA this is about four times faster, forward and backward, than
    ``tf.nn.max_pool2d``, whose gradient XLA lowers to a slow select-and-scatter on the CPU.
    ``tf.maximum`` passes the gradient of a tie to its first argument, so, as in PyTorch,
    the first maximum of each window in row-major order receives it.
    """
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None:  # shapes unknown while tracing: the fused op
        if padding:
            inputs = tf.pad(inputs, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=-np.inf)
        return tf.nn.max_pool2d(inputs, kernel, stride, "VALID", data_format="NHWC")
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    x = tf.pad(inputs, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=-np.inf)
    rows = None
    for j in range(kernel):
        column = x[:, :, j:j + stride * (out_w - 1) + 1:stride, :]
        rows = column if rows is None else tf.maximum(rows, column)
    outputs = None
    for i in range(kernel):
        row = rows[:, i:i + stride * (out_h - 1) + 1:stride, :, :]
        outputs = row if outputs is None else tf.maximum(outputs, row)
    return outputs


class Residual(keras.layers.Layer):
    """The chapter's residual block, ``Residual(num_channels, use_1x1conv=False, strides=1)``.

    Two 3x3 convolutions with BatchNorm, plus the input, through ReLU; with
    ``use_1x1conv=True`` the shortcut is a strided 1x1 convolution (bias, no BatchNorm).
    Input channels are taken from the first input, as in the chapter.
    """

    #: This block's layers and their canonical (torchvision) names; the chapter's ``conv3``
    #: is torchvision's ``downsample.0``.
    CANONICAL_NAMES = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "conv3": "downsample.0"}

    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = _Conv2D(num_channels, 3, strides, 1, name="conv1")
        self.bn1 = _BatchNorm(name="bn1")
        self.conv2 = _Conv2D(num_channels, 3, 1, 1, name="conv2")
        self.bn2 = _BatchNorm(name="bn2")
        self.conv3 = _Conv2D(num_channels, 1, strides, 0, name="conv3") if use_1x1conv else None
        self.num_channels = num_channels

    def build(self, input_shape):
        # Built layer by layer from the shapes, not by tracing ``call`` symbolically
        # (what Keras does otherwise): building ResNet-18 takes a fraction of the time.
        inputs, outputs = _shape_with_channels(int(input_shape[-1])), _shape_with_channels(self.num_channels)
        for layer, shape in ((self.conv1, inputs), (self.bn1, outputs), (self.conv2, outputs), (self.bn2, outputs)):
            layer.build(shape)
        if self.conv3 is not None:
            self.conv3.build(inputs)

    def call(self, X, training=False):
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))

        Y = self.bn2(self.conv2(Y), training=training)

        if self.conv3 is not None:
            X = self.conv3(X)
        return tf.nn.relu(Y + X)


class ResnetBlock(keras.layers.Layer):
    """The chapter's ``ResnetBlock(num_channels, num_residuals, first_block=False)``.

    The first residual of every block but the first halves height and width and changes
    the channel count through the 1x1 shortcut.
    """

    def __init__(self, num_channels, num_residuals, first_block=False, **kwargs):
        super().__init__(**kwargs)
        self.residual_layers = [
            Residual(num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block else Residual(num_channels)
            for i in range(num_residuals)
        ]

    def build(self, input_shape):
        for layer in self.residual_layers:
            layer.build(input_shape)
            input_shape = _shape_with_channels(layer.num_channels)

    def call(self, X, training=False):
        for layer in self.residual_layers:
            X = layer(X, training=training)
        return X


def resnet_block(num_channels, num_residuals, first_block=False):
    """The chapter's stage as a function, returning a :class:`ResnetBlock`."""
    return ResnetBlock(num_channels, num_residuals, first_block=first_block)


#: Block type in :mod:`common.spec` -> the class that builds it.
_BLOCK_TYPES = {"basic": Residual}


class ResNet(keras.Model):
    """ResNet from a spec: stem (conv1, bn1, ReLU, max pool), stages layer1-4, pool, fc.

    Attribute names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4`` as
    lists of blocks, ``fc``), so the canonical weight names follow from the structure.
    """

    def __init__(self, arch="resnet18", num_classes=10, in_channels=1, **kwargs):
        super().__init__(**kwargs)
        self.spec = get_spec(arch)
        self.num_classes, self.in_channels = num_classes, in_channels
        spec = self.spec
        self.conv1 = _Conv2D(spec.stem_channels, spec.stem_kernel, spec.stem_stride, spec.stem_padding, name="conv1")
        self.bn1 = _BatchNorm(name="bn1")
        block_type = _BLOCK_TYPES[spec.block]
        self.stage_names = [f"layer{i}" for i in range(1, len(spec.stages) + 1)]
        stages: Dict[str, list] = {name: [] for name in self.stage_names}
        for block in iter_blocks(spec):
            stages[f"layer{block.stage}"].append(
                block_type(block.channels, use_1x1conv=block.use_1x1conv, strides=block.stride, name=block.name)
            )
        for name, blocks in stages.items():
            setattr(self, name, blocks)
        self.fc = keras.layers.Dense(num_classes, name="fc")
        # Create every variable now (no shape depends on height and width), so weights can
        # be exported or imported before the first batch.
        self.build(_shape_with_channels(in_channels))

    def build(self, input_shape):
        spec = self.spec
        self.conv1.build(input_shape)
        self.bn1.build(_shape_with_channels(spec.stem_channels))
        for block in iter_blocks(spec):
            stage, index = block.name.split(".")
            getattr(self, stage)[int(index)].build(_shape_with_channels(block.in_channels))
        self.fc.build((None, spec.feature_channels))

    def _stem(self, x, training):
        x = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        return _max_pool(x, self.spec.pool_kernel, self.spec.pool_stride, self.spec.pool_padding)

    def stages(self):
        """``[(name, function(x, training))]`` in order: stem, layer1..layerN, pool, fc.

        ``call`` runs them one after the other; :func:`trace_shapes` prints each output,
        like the chapter's loop over the layers.
        """

        def stage(blocks):
            def run(x, training):
                for block in blocks:
                    x = block(x, training=training)
                return x

            return run

        return (
            [("stem", self._stem)]
            + [(name, stage(getattr(self, name))) for name in self.stage_names]
            + [("pool", lambda x, training: tf.reduce_mean(x, axis=[1, 2])), ("fc", lambda x, training: self.fc(x))]
        )

    def __call__(self, inputs, *args, **kwargs):
        # Checked here rather than in ``call``: Keras wraps whatever ``call`` raises in a
        # multi-line report, and a wrong shape deserves one clear line.
        check_input_shape(inputs.shape if hasattr(inputs, "shape") else np.shape(inputs), self.in_channels, DATA_FORMAT)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=False):
        x = inputs
        for _, run in self.stages():
            x = run(x, training)
        return x


def resnet(arch="resnet18", num_classes=10, in_channels=1):
    """A :class:`ResNet` for ``arch`` (see :data:`common.spec.RESNET_SPECS`), variables built."""
    return ResNet(arch, num_classes=num_classes, in_channels=in_channels)


def resnet18(num_classes=10, in_channels=1):
    return resnet("resnet18", num_classes=num_classes, in_channels=in_channels)


def count_parameters(net) -> int:
    """Trainable scalars (BatchNorm moving statistics are state, not parameters)."""
    return sum(int(np.prod(v.shape)) for v in net.trainable_variables)


# --- canonical names and layouts ------------------------------------------------------

def _named_layers(net) -> Iterator[Tuple[str, keras.layers.Layer]]:
    """(canonical prefix, layer) for every layer with weights, in canonical order.

    Works for :class:`ResNet` and for the chapter's ``tf.keras.Sequential`` (stem layers,
    four :class:`ResnetBlock`, global pool, dense), so ``train_ch6`` can start either from
    the common initial weights.
    """
    if isinstance(net, ResNet):
        stem = [net.conv1, net.bn1]
        stages = [getattr(net, name) for name in net.stage_names]
        head = net.fc
    else:
        layers = list(getattr(net, "layers", []))
        stages = [layer.residual_layers for layer in layers if isinstance(layer, ResnetBlock)]
        first_stage = next((i for i, layer in enumerate(layers) if isinstance(layer, ResnetBlock)), len(layers))
        stem = [layer for layer in layers[:first_stage] if layer.weights]
        dense = [layer for layer in layers[first_stage:] if layer.weights and not isinstance(layer, ResnetBlock)]
        if len(stem) != 2 or not stages or len(dense) != 1:
            raise ValueError(
                f"cannot map {type(net).__name__} to canonical ResNet weights: expected a ResNet, or the "
                "chapter's Sequential (conv, batch norm, ..., ResnetBlock x N, ..., Dense)"
            )
        head = dense[0]
    yield "conv1", stem[0]
    yield "bn1", stem[1]
    for stage_number, blocks in enumerate(stages, start=1):
        for index, block in enumerate(blocks):
            for attribute, canonical in Residual.CANONICAL_NAMES.items():
                layer = getattr(block, attribute)
                if layer is not None:
                    yield f"layer{stage_number}.{index}.{canonical}", layer
    yield "fc", head


# Canonical suffix -> (variable attribute, layout converter to canonical, converter back).
# Keras conv kernels are HWIO (canonical OIHW), dense kernels (in, out) (canonical (out, in)).
_CONV_VARIABLES = {
    "weight": ("kernel", lambda w: w.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0)),
    "bias": ("bias", None, None),
}
_DENSE_VARIABLES = {"weight": ("kernel", np.transpose, np.transpose), "bias": ("bias", None, None)}
_BN_VARIABLES = {
    "weight": ("gamma", None, None),
    "bias": ("beta", None, None),
    "running_mean": ("moving_mean", None, None),
    "running_var": ("moving_variance", None, None),
}


def _variable_table(layer):
    if isinstance(layer, (_BatchNorm, keras.layers.BatchNormalization)):
        return _BN_VARIABLES
    if isinstance(layer, keras.layers.Dense):
        return _DENSE_VARIABLES
    return _CONV_VARIABLES


def _canonical_variables(net) -> Dict[str, tuple]:
    """Canonical name -> (variable, to_canonical, from_canonical)."""
    table = {}
    for prefix, layer in _named_layers(net):
        for suffix, (attribute, to_canonical, from_canonical) in _variable_table(layer).items():
            table[f"{prefix}.{suffix}"] = (getattr(layer, attribute), to_canonical, from_canonical)
    return table


def _net_io(net) -> Tuple[str, int, int]:
    if isinstance(net, ResNet):
        return net.spec.name, net.in_channels, net.num_classes
    variables = _canonical_variables(net)
    return "resnet18", int(variables["conv1.weight"][0].shape[2]), int(variables["fc.weight"][0].shape[1])


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 array in canonical layout, in :func:`parameter_shapes` order."""
    arch, in_channels, num_classes = _net_io(net)
    variables = _canonical_variables(net)
    weights = {}
    for name in parameter_shapes(arch, in_channels, num_classes):
        variable, to_canonical, _ = variables[name]
        value = np.asarray(variable.numpy(), dtype=np.float32)
        weights[name] = np.ascontiguousarray(to_canonical(value) if to_canonical else value)
    return weights


def import_weights(net, weights) -> None:
    """Load canonical ``weights`` (checked first: a wrong key or shape raises WeightsError)."""
    arch, in_channels, num_classes = _net_io(net)
    check_weights(weights, arch, in_channels=in_channels, num_classes=num_classes)
    for name, (variable, _, from_canonical) in _canonical_variables(net).items():
        value = np.asarray(weights[name], dtype=np.float32)
        variable.assign(from_canonical(value) if from_canonical else value)


def forward(net, images, training=False) -> np.ndarray:
    """Logits for an NCHW NumPy batch; ``training=True`` uses and updates batch statistics."""
    check_input_shape(np.shape(images), _net_io(net)[1], "NCHW")
    return to_numpy(net(to_tensor(images), training=training))


def trace_shapes(net, images) -> List[Tuple[str, tuple]]:
    """The chapter's layer-by-layer loop: (stage name, NCHW output shape) per stage."""
    check_input_shape(np.shape(images), net.in_channels, "NCHW")
    x = to_tensor(images)
    shapes = []
    for name, run in net.stages():
        x = run(x, False)
        shape = tuple(int(d) for d in x.shape)
        shapes.append((name, (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape))
    return shapes
