"""What the TensorFlow network needs beyond Keras' stock layers, kept out of :mod:`resnet_tf.model`:
the layers a network is built from.

For exact agreement with the other backends and the NumPy oracle, the chapter's code uses
three helpers by name:

* :func:`conv2d`: ``keras.layers.Conv2D`` padded explicitly and symmetrically, as PyTorch pads
  (Keras' ``padding='same'`` pads a stride-2 convolution on an even size by (0, 1)).
* :func:`batch_norm`: BatchNorm with PyTorch's epsilon and momentum that updates its running
  variance with the unbiased batch variance (Keras' layer: epsilon 1e-3, the biased variance).
* :func:`max_pool2d`: max pooling padded symmetrically with -inf that propagates NaN
  (TensorFlow's max pool skips NaN) and passes a tie's gradient to the first maximum.

For speed, :func:`fast_conv2d` (the same arguments as :func:`conv2d`) builds :class:`FastConv2D`,
which runs ``tf.nn.conv2d`` with the padding given per side, or, on tiny maps and few input
channels, a matrix product: the same function, faster under XLA. A grouped convolution
(ResNeXt's) runs where TensorFlow computes it and its gradient: XLA's on a GPU, matrix products
per group under XLA on a CPU, TensorFlow's own kernel (oneDNN's, cuDNN's) or one convolution
per group outside XLA. :data:`PLAIN` and :data:`FAST` are the two :class:`common.fastpaths.Layers`
a ``ResNet`` is built from (how and why: :mod:`common.fastpaths`); they differ only in the
convolution, whose variables and their names are the same either way.

The matrix-product convolution and the separable max pool mirror :mod:`resnet_jax.kernels`' (the
same names and steps, in TensorFlow's tokens).
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from common import autotune
from common.autotune import NATIVE
from common.fastpaths import (
    MATMUL_CONV_MAX_IN_CHANNELS,
    MATMUL_CONV_MAX_OUTPUT_PIXELS,
    Layers,
    tap_windows,
    visible_taps,
)
from common.spec import BN_EPSILON, BN_MOMENTUM, conv_output_size

__all__ = ["batch_norm", "PLAIN", "FAST", "fast_layer_count", "FRAMEWORK", "tracing", "compiler", "conv2d",
           "fast_conv2d", "max_pool2d", "global_avg_pool2d", "SymmetricConv2D", "FastConv2D", "BatchNorm",
           "SymmetricMaxPool2D"]
# The layer classes are public: Keras names a layer after its class, and a name starting with
# an underscore is no valid name scope.


#: What an autotuned choice is measured for (with the machine): this TensorFlow.
FRAMEWORK = f"TensorFlow {tf.__version__}"

_tracing = threading.local()


@contextmanager
def tracing(compiler_name: str, batch: int):
    """Layers called inside run as a step compiled by ``compiler_name`` ("xla" or "graph") of
    ``batch`` examples would: how BatchNorm is computed and what autotuning measures."""
    previous = getattr(_tracing, "state", None)
    _tracing.state = (compiler_name, batch)
    try:
        yield
    finally:
        _tracing.state = previous


def compiler() -> str:
    """"xla" or "graph" inside :func:`tracing`, "eager" when running eagerly, else "xla"."""
    state = getattr(_tracing, "state", None)
    if state is not None:
        return state[0]
    return "eager" if tf.executing_eagerly() else "xla"


def _padded(shape, padding):
    """An NHWC shape with ``padding`` added to both sides of height and width."""
    return tuple(None if d is None or i not in (1, 2) else d + 2 * padding for i, d in enumerate(shape))


def _pad(x, padding, value=0.0):
    return tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=value)


class SymmetricConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` (kernel HWIO, bias unless ``use_bias=False``, ``groups``) on the input
    zero-padded by ``padding`` on every side. Keras computes a grouped convolution under XLA (its
    own ``tf.function(jit_compile=True)``): TensorFlow's kernels outside XLA may refuse its gradient."""

    def __init__(self, filters, kernel_size, strides=1, padding=0, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)
        self.symmetric_padding = padding

    def call(self, inputs):
        return super().call(_pad(inputs, self.symmetric_padding) if self.symmetric_padding else inputs)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded(input_shape, self.symmetric_padding))


def conv2d(filters, kernel_size, strides=1, padding=0, groups=1, use_bias=True):
    """The chapter's ``Conv2D(filters, kernel_size, strides)`` with ``padding`` pixels on every side
    (and Keras' ``groups`` and ``use_bias``)."""
    return SymmetricConv2D(filters, kernel_size, strides=strides, padding=padding, groups=groups, use_bias=use_bias)


def fast_conv2d(filters, kernel_size, strides=1, padding=0, groups=1, use_bias=True):
    """:func:`conv2d` as :class:`FastConv2D`: the same arguments, variables and function."""
    return FastConv2D(filters, kernel_size, strides=strides, padding=padding, groups=groups, use_bias=use_bias)


class BatchNorm(keras.layers.Layer):
    """BatchNorm as PyTorch computes it: epsilon 1e-5, momentum 0.1 in PyTorch's convention.

    Normalises with the biased batch variance and updates ``moving_variance`` with the
    unbiased one, as ``torch.nn.BatchNorm2d`` does. Under XLA, plain ops (moments, then one
    multiply-add) that XLA fuses with the neighbouring bias add, ReLU and residual add (the
    gradient is automatic differentiation's); otherwise TensorFlow's fused kernel.

    Always in float32, as Keras' own BatchNormalization: under a mixed policy (``mixed_bfloat16``)
    the input is cast to float32, the statistics, the normalisation and the variables
    (``autocast=False``) stay float32, and the output is cast back to the compute dtype.
    """

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=channels, initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(name="moving_mean", shape=channels, initializer="zeros", trainable=False,
                                           autocast=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=channels, initializer="ones", trainable=False, autocast=False
        )

    def call(self, inputs, training=False):
        # float32 in (a no-op for float32 inputs), the compute dtype out.
        return tf.cast(self._normalize(tf.cast(inputs, tf.float32), training), self.compute_dtype)

    def _normalize(self, inputs, training):
        if compiler() != "xla":
            return self._fused(inputs, training)
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

    def _fused(self, inputs, training):
        """The same BatchNorm as one ``FusedBatchNormV3`` (oneDNN's kernel outside XLA, which
        expands it in extra passes): it normalises with the biased batch variance and, given
        ``exponential_avg_factor``, updates the running variance with the unbiased one. The raw
        op, as ``tf.nn.fused_batch_norm`` would raise epsilon to 1.001e-5."""
        outputs, running_mean, running_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma, offset=self.beta, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=BN_EPSILON, exponential_avg_factor=BN_MOMENTUM if training else 1.0, data_format="NHWC",
            is_training=bool(training))
        if training:
            self.moving_mean.assign(running_mean)
            self.moving_variance.assign(running_variance)
        return outputs


def batch_norm():
    """The chapter's ``BatchNormalization()`` with PyTorch's constants and running variance."""
    return BatchNorm()


class SymmetricMaxPool2D(keras.layers.MaxPool2D):
    """Max pooling on the input padded with -inf by ``padding`` on every side, NaN propagated.

    Outside XLA, TensorFlow's max pool with NaN put back. Under XLA, :func:`_separable_max_pool`:
    as in PyTorch, the first maximum of each window in row-major order receives a tie's gradient,
    and no select-and-scatter (what ``tf.nn.max_pool2d``'s gradient lowers to) is compiled.
    """

    def __init__(self, pool_size, strides, padding=0, **kwargs):
        super().__init__(pool_size, strides=strides, padding="valid", **kwargs)
        self.symmetric_padding = padding

    def call(self, inputs):
        (kernel, _), (stride, _), padding = self.pool_size, self.strides, self.symmetric_padding
        if inputs.shape[1] is None or inputs.shape[2] is None:  # shapes unknown while tracing symbolically
            return super().call(_pad(inputs, padding, -np.inf) if padding else inputs)
        if compiler() == "xla":
            return _separable_max_pool(inputs, kernel, stride, padding)
        # TensorFlow's own kernel (oneDNN's, which also passes a tie's gradient to the first
        # maximum); it skips NaN, so a window holding one is set to NaN after it.
        x = _pad(inputs, padding, -np.inf) if padding else inputs
        outputs = tf.nn.max_pool2d(x, kernel, stride, "VALID")
        has_nan = tf.nn.max_pool2d(tf.cast(tf.math.is_nan(x), x.dtype), kernel, stride, "VALID")
        return tf.where(has_nan > 0, tf.constant(np.nan, x.dtype), outputs)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded(input_shape, self.symmetric_padding))


def max_pool2d(pool_size, strides, padding=0):
    """The chapter's ``MaxPool2D(pool_size, strides)`` with ``padding`` pixels (-inf) on every side."""
    return SymmetricMaxPool2D(pool_size, strides, padding)


def global_avg_pool2d():
    """The chapter's ``GlobalAvgPool2D()``: the mean over height and width, computed in the input's
    dtype (Keras' layer averages a bfloat16 input in float32)."""
    return functools.partial(tf.reduce_mean, axis=[1, 2])


# --- speed ------------------------------------------------------------------------------

def _first_max(a, b):
    """The larger of ``a`` and ``b``, ``a`` on a tie (so its gradient goes to the first maximum, as in
    PyTorch; ``tf.maximum``'s gradient goes to its first argument on a tie), NaN where either is NaN."""
    return tf.maximum(a, b)


def _separable_max_pool(x, kernel, stride, padding):
    """Max pooling (NHWC, -inf padding) as running maxima of strided slices along the width, then the
    height: the same maxima as ``tf.nn.max_pool2d`` but NaN kept, the gradient to the first maximum of
    each window in row-major order, and no select-and-scatter in the gradient (slow under XLA)."""
    if padding:
        x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=-np.inf)
    out_h = (x.shape[1] - kernel) // stride + 1
    out_w = (x.shape[2] - kernel) // stride + 1
    rows = None
    for j in range(kernel):
        column = x[:, :, j:j + stride * (out_w - 1) + 1:stride, :]
        rows = column if rows is None else _first_max(rows, column)
    outputs = None
    for i in range(kernel):
        row = rows[:, i:i + stride * (out_h - 1) + 1:stride, :, :]
        outputs = row if outputs is None else _first_max(outputs, row)
    return outputs


def _conv_as_matmul(x, kernel, strides, padding, groups=1):
    """Convolution (NHWC, kernel HWIO) as im2col times the kernel matrix; a grouped one as one such
    product per group (an einsum over the groups).

    The columns are gathered in two passes of strided slices of the padded input, along the width
    (one per kernel column), then along the height (one per kernel row): ``kh + kw`` slices, not
    ``kh * kw`` (which XLA takes seconds to compile for the 7 x 7 stem), in the kernel's own (row,
    column, channel) order. The same sums as the convolution. Kernel taps that only ever see
    padding (8 of 9 on a 1x1 map) contribute exact zeros and are left out
    (:func:`common.fastpaths.visible_taps`); their gradient is exactly zero too. ``strides`` and
    ``padding`` are (height, width) pairs.
    """
    kh, kw, channels, filters = kernel.shape  # channels: per group
    (sh, sw), (ph, pw) = strides, padding
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = conv_output_size((height, width), (kh, kw), (sh, sw), (ph, pw))
    rows, cols = visible_taps(kh, height, sh, ph), visible_taps(kw, width, sw, pw)
    if ph or pw:
        x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    x = _concat([x[:, :, j:j + sw * (out_w - 1) + 1:sw, :] for j in cols])  # (N, H + 2ph, out_w, cols * C)
    x = _concat([x[:, i:i + sh * (out_h - 1) + 1:sh] for i in rows])  # (N, out_h, out_w, rows * cols * C)
    # (rows, cols, channels, filters), stacked: tf.gather's gradient would be IndexedSlices (a sparse update)
    kernel = tf.stack([tf.stack([kernel[i, j] for j in cols]) for i in rows])
    taps = len(rows) * len(cols)
    if groups == 1:
        outputs = tf.reshape(x, [-1, taps * channels]) @ tf.reshape(kernel, [taps * channels, filters])
    else:  # pixel p, tap t, group g, channel c of the group, output o of the group
        columns = tf.reshape(x, [-1, taps, groups, channels])
        outputs = tf.einsum("ptgc,tcgo->pgo", columns, tf.reshape(kernel, [taps, channels, groups, -1]))
    return tf.reshape(outputs, [-1, out_h, out_w, filters])


def _conv_by_taps(x, kernel, strides, padding):
    """Convolution (NHWC, kernel HWIO, one group) as one matrix product per kernel tap, summed:
    tap ``(i, j)`` multiplies the input pixels it meets, a strided slice, by ``kernel[i, j]``
    and adds the product into the output pixels whose window meets the input there
    (:func:`common.fastpaths.tap_windows`).

    The products a tap would take with padding are exact zeros, left out: on a 3 x 3 map padded
    by one, 49 of a 3 x 3 kernel's 81 pixel-tap pairs remain (16 of 36 on a 2 x 2 map), where
    im2col (:func:`_conv_as_matmul`) multiplies all of them and copies every column first. The
    same nonzero terms as the convolution, summed tap by tap; the gradients are the products'
    (a slice's gradient pads: no scatter). ``strides`` and ``padding`` are (height, width) pairs.
    Outside XLA it runs as :func:`_conv_by_taps_xla`."""
    kh, kw, channels, filters = kernel.shape
    (sh, sw), (ph, pw) = strides, padding
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = conv_output_size((height, width), (kh, kw), (sh, sw), (ph, pw))
    outputs = None
    for i, top, bottom, row in tap_windows(kh, height, sh, ph):
        for j, left, right, col in tap_windows(kw, width, sw, pw):
            rows, cols = bottom - top, right - left
            pixels = x[:, row:row + sh * (rows - 1) + 1:sh, col:col + sw * (cols - 1) + 1:sw, :]
            product = tf.reshape(tf.reshape(pixels, [-1, channels]) @ kernel[i, j], [-1, rows, cols, filters])
            product = tf.pad(product, [[0, 0], [top, out_h - bottom], [left, out_w - right], [0, 0]])
            outputs = product if outputs is None else outputs + product
    return outputs


#: :func:`_conv_by_taps` compiled by XLA inside a step that is not (TensorFlow's graph at 96 x 96
#: on a CPU, where oneDNN's convolutions beat XLA's): one fused computation, its gradient compiled
#: too, where TensorFlow's own kernels would run the slices, pads and small products one by one
#: (slower than oneDNN's convolution).
_conv_by_taps_xla = tf.function(_conv_by_taps, jit_compile=True)


def _concat(parts):
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


def _conv_per_group(x, kernel, strides, padding, groups):
    """A grouped convolution as one convolution per group, concatenated: the same sums, in a form
    whose gradient every TensorFlow kernel computes."""
    return tf.concat([tf.nn.conv2d(part, part_kernel, strides, padding, data_format="NHWC")
                      for part, part_kernel in zip(tf.split(x, groups, axis=-1), tf.split(kernel, groups, axis=-1))],
                     axis=-1)


@functools.lru_cache(maxsize=None)
def _native_grouped_gradients(device: str) -> bool:
    """Whether TensorFlow's own convolution kernels on ``device`` ("CPU" or "GPU"), outside XLA, take
    a grouped convolution's gradients: cuDNN's and oneDNN's (TensorFlow's default CPU kernels on
    x86) do, given the padding as 'SAME' or 'VALID'; the others refuse ("Gradients for grouped
    convolutions are not supported on CPU"). Tried once, eagerly, on a tiny convolution."""
    def probe():
        with tf.device(f"/{device}:0"):
            x, kernel = tf.ones((1, 3, 3, 2)), tf.ones((1, 1, 1, 2))
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                outputs = tf.nn.conv2d(x, kernel, 1, "VALID", data_format="NHWC")
            tape.gradient(outputs, [x, kernel])
    try:
        autotune.on_own_thread(probe)
    except tf.errors.OpError:
        return False
    return True


def _grouped_path(device: str, how: str) -> str:
    """How :class:`FastConv2D` computes a grouped convolution on the variable's ``device``, compiled as
    ``how``. Under XLA: XLA's own on a GPU (or where ``RESNET_FAST_PATHS=native``), else the products
    per group of :func:`_conv_as_matmul` (a training step of XLA's grouped convolution on a CPU took
    about 100 times as long, its gradient most of it: too slow even to measure per layer).
    Outside XLA: TensorFlow's own kernel where it takes the gradient, else :func:`_conv_per_group`."""
    kind = "GPU" if "GPU" in device.upper() else "CPU"
    if how == "xla":
        return NATIVE if kind == "GPU" or autotune.fast_paths_mode() == NATIVE else "matmul"
    return NATIVE if _native_grouped_gradients(kind) else "per_group"


class FastConv2D(SymmetricConv2D):
    """:class:`SymmetricConv2D` computed by ``tf.nn.conv2d`` with the padding given per side (no ``tf.pad``
    op), or, with at most ``MATMUL_CONV_MAX_OUTPUT_PIXELS`` output pixels or
    ``MATMUL_CONV_MAX_IN_CHANNELS`` input channels, by :func:`_conv_as_matmul` where
    :func:`common.autotune.choose` measures that faster on this machine (TensorFlow's and XLA's
    convolution kernels can be slow on 2x2 and 1x1 maps and on the one-channel stem); with at most
    ``MATMUL_CONV_MAX_OUTPUT_PIXELS`` output pixels, also by :func:`_conv_by_taps` (one product per
    kernel tap, padding's zeros left out; compiled by XLA even in a step that is not). A grouped
    convolution takes the path :func:`_grouped_path` names. Constructed as :class:`SymmetricConv2D`
    is, with no state of its own: the same variables under the same names."""

    def __init__(self, *args, name=None, **kwargs):
        if name is None:
            # Keras names a layer after its class, counting per name (symmetric_conv2d_3): named as the
            # plain layer would be, the variables' paths do not depend on the layers a network is built from.
            uid = keras.backend.get_uid("symmetric_conv2d")
            name = "symmetric_conv2d" if uid == 1 else f"symmetric_conv2d_{uid - 1}"
        super().__init__(*args, name=name, **kwargs)

    def _as_matmul(self, shape):
        height, width, channels = shape[1], shape[2], shape[3]
        if height is None or width is None:
            return False
        (kernel, _), (stride, _) = self.kernel_size, self.strides
        out_h, out_w = conv_output_size((height, width), kernel, stride, self.symmetric_padding)
        return out_h * out_w <= MATMUL_CONV_MAX_OUTPUT_PIXELS or channels <= MATMUL_CONV_MAX_IN_CHANNELS

    def call(self, inputs):
        how = compiler()
        if self.groups > 1:
            path = _grouped_path(self.kernel.value.device, how)
        elif self._as_matmul(inputs.shape):
            state = getattr(_tracing, "state", None)
            batch = inputs.shape[0] or (state[1] if state else 64)
            shape = (batch,) + tuple(inputs.shape[1:])
            (kernel, _), (stride, _), p = self.kernel_size, self.strides, self.symmetric_padding
            dtype = inputs.dtype  # bfloat16 under Keras' mixed_bfloat16 policy: measured apart
            site = f"conv {shape[-1]}->{self.filters} k{kernel} s{stride} p{p} on {shape} {how} train"
            site += "" if dtype == tf.float32 else f" {dtype.name}"
            # Per-tap products where a tiny map's padding makes im2col's a large share of zeros.
            (out_h, out_w), groups = conv_output_size(shape[1:3], kernel, stride, p), self.groups
            taps = groups == 1 and kernel > 1 and out_h * out_w <= MATMUL_CONV_MAX_OUTPUT_PIXELS
            paths = ["matmul", "taps", NATIVE] if taps else ["matmul", NATIVE]
            path = autotune.on_own_thread(lambda: autotune.choose(FRAMEWORK, site, paths,
                                                          lambda path: _timed_run(self, path, shape, how, dtype)))
        else:
            path = NATIVE
        return self._compute(path, inputs, self.kernel, self.bias, how)

    def _compute(self, path, inputs, kernel, bias, how="xla"):
        (size, _), (stride, _), p = self.kernel_size, self.strides, self.symmetric_padding
        if path == "matmul":
            outputs = _conv_as_matmul(inputs, kernel, self.strides, (p, p), self.groups)
        elif path == "taps":
            taps = _conv_by_taps if how == "xla" else _conv_by_taps_xla
            outputs = taps(inputs, tf.cast(kernel, inputs.dtype), tuple(self.strides), (p, p))
        else:
            if how == "xla" or not p:  # XLA takes the padding per side; no tf.pad op
                padding = [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID"
            elif stride == 1 and size == 2 * p + 1:  # 'SAME' pads (p, p) here: oneDNN's own kernel
                padding = "SAME"
            else:  # padding given per side is far slower outside XLA: pad, then a 'VALID' convolution
                inputs, padding = _pad(inputs, p), "VALID"
            if path == "per_group":
                outputs = _conv_per_group(inputs, kernel, self.strides, padding, self.groups)
            else:
                outputs = tf.nn.conv2d(inputs, kernel, self.strides, padding, data_format="NHWC")
        if bias is None:
            return outputs
        if how == "xla":
            return tf.nn.bias_add(outputs, bias, data_format="NHWC")
        return _bias_add(outputs, tf.convert_to_tensor(bias))  # a tensor: the variable is read outside


@tf.custom_gradient
def _bias_add(x, bias):
    """``tf.nn.bias_add`` (NHWC) whose bias gradient is a ``reduce_sum``, not ``BiasAddGrad``.

    Outside XLA, TensorFlow's oneDNN graph pass fuses a convolution's ``Conv2DBackpropFilter``
    with the ``BiasAddGrad`` after it into one oneDNN primitive that takes the kernel and bias
    gradients together: on the AMD EPYC of docs/benchmarks.md, 16.3 ms instead of 4.5 for the
    stem's kernel gradient at 96 x 96 (batch 64) and 35.5 ms instead of 26.0 for layer1's four,
    a training step 7-9% slower in all. The sum is the same sum; the forward pass keeps the
    fused convolution with bias."""
    def gradient(upstream):
        return upstream, tf.reduce_sum(upstream, axis=list(range(len(upstream.shape) - 1)))
    return tf.nn.bias_add(x, bias, data_format="NHWC"), gradient


def _timed_run(layer, path, shape, how, dtype=tf.float32):
    """One forward and backward pass of ``layer`` taken by ``path`` on fresh ``dtype`` tensors,
    compiled as the step is (``how``: "xla", "graph" or "eager"), from a dense upstream gradient
    as in a step (a plain sum's is a broadcast one, which XLA may fold into the products). Seeded:
    with op determinism on (a GPU's default, see :func:`resnet_tf.train.use_op_determinism`),
    TensorFlow refuses random ops without a seed."""
    x = tf.random.stateless_uniform(shape, seed=(0, 0), dtype=dtype)
    kernel = tf.random.stateless_uniform(layer.kernel.shape, seed=(0, 1), dtype=dtype)
    bias = None if layer.bias is None else tf.zeros(layer.bias.shape, dtype)
    (size, _), (stride, _) = layer.kernel_size, layer.strides
    out_h, out_w = conv_output_size(shape[1:3], size, stride, layer.symmetric_padding)
    upstream = tf.random.stateless_uniform((shape[0], out_h, out_w, layer.filters), seed=(0, 2), minval=-1,
                                           dtype=dtype)

    def step(x, kernel, bias):
        sources = [x, kernel] + ([] if bias is None else [bias])
        with tf.GradientTape() as tape:
            tape.watch(sources)
            loss = tf.reduce_sum(layer._compute(path, x, kernel, bias, how) * upstream)
        return tape.gradient(loss, sources)
    if how != "eager":
        step = tf.function(step, jit_compile=how == "xla")
    return lambda: [gradient.numpy() for gradient in step(x, kernel, bias)]


#: Keras' own layers, padded and normalised as the project computes (``plain=True``,
#: ``RESNET_PLAIN_LAYERS=1``, the chapter's blocks by default).
PLAIN = Layers("plain", conv=conv2d, max_pool=max_pool2d, global_pool=global_avg_pool2d)
#: The same with :class:`FastConv2D`; the max pool is already separable under XLA, the mean is one op.
FAST = Layers("fast", conv=fast_conv2d, max_pool=max_pool2d, global_pool=global_avg_pool2d)


def _sublayers(net):
    # Keras has no public recursive walk over a layer's sublayers (Model.layers is one level).
    return net._flatten_layers(include_self=True, recursive=True)


def fast_layer_count(net) -> int:
    """How many layers of ``net`` run a fast path (0 for a network built from :data:`PLAIN`)."""
    return sum(isinstance(layer, FastConv2D) for layer in _sublayers(net))
