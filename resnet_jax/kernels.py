"""What the JAX network needs beyond Flax's stock layers, kept out of :mod:`resnet_jax.model`:
the layers a network is built from.

For exact agreement with the other backends and the NumPy oracle, the chapter's code uses
helpers by name:

* :func:`conv2d`: Flax's ``nn.Conv`` padded explicitly and symmetrically, as PyTorch pads
  (``padding='same'``, the book's, pads a stride-2 convolution on an even size by (0, 1)).
* :func:`batch_norm`: BatchNorm with PyTorch's epsilon and momentum that updates its running
  variance with the unbiased batch variance (Flax's ``nn.BatchNorm``: momentum 0.99 in the
  other convention, the biased variance), computed in float32 whatever the network computes in.
* :class:`MaxPool`: Flax's ``nn.max_pool`` as a layer, padded symmetrically with -inf.

:data:`PLAIN` and :data:`FAST` are the two :class:`common.fastpaths.Layers` a ``ResNet`` is built
from (how and why: :mod:`common.fastpaths`; Flax's own idiom, the imagenet example's ``conv:
ModuleDef`` fields). ``FAST`` builds every convolution as :class:`FastConv` (:func:`fast_conv2d`:
on tiny maps, few input channels, 1 x 1 kernels and grouped convolutions a matrix product, where
:func:`common.autotune.choose` measures it faster; XLA's own convolution on the CPU takes up to 100
times as long on 2 x 2 and 1 x 1 maps) and the max pool as :class:`SeparableMaxPool`: the same
variables, the same function, another computation. A fast convolution chooses its path when it
is traced, by ``RESNET_FAST_PATHS``'s mode: so a jitted step takes
:func:`common.autotune.fast_paths_mode` as a static argument and compiles anew when it changes.

On a CPU, XLA's own convolution in :class:`FastConv` has a gradient of its own
(:func:`_xla_conv`): the same two convolutions XLA's autodiff makes, but the kernel gradient's
input comes through ``lax.optimization_barrier``, so XLA transposes the stored activation for it
instead of recomputing BatchNorm, ReLU and residual adds inside the transpose (the same numbers,
about 7% less time per step at 96 x 96). And the library XLA computes convolutions with is one
more autotuned choice, per network, batch shape and machine (:func:`choose_conv_library`): its
default (YNNPACK) or oneDNN (:data:`CONV_LIBRARIES`: compiler options of the jitted step; oneDNN
sums in another order, so the numbers differ by rounding). A step takes the library as a static
argument too and traces under :func:`conv_library_scope`, so that each fast convolution measures
its paths compiled as the step is.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax import lax

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

__all__ = ["batch_norm", "PLAIN", "FAST", "fast_layer_count", "FRAMEWORK", "precision_scope", "BatchNorm", "conv2d",
           "fast_conv2d", "FastConv", "MaxPool", "SeparableMaxPool", "global_avg_pool2d", "ONEDNN", "CONV_LIBRARIES",
           "compiler_options", "conv_library_scope", "choose_conv_library"]

#: What an autotuned choice is measured for (with the machine): this JAX.
FRAMEWORK = f"JAX {jax.__version__}"

#: The library choice that has XLA's CPU convolutions computed by oneDNN.
ONEDNN = "onednn"

#: Library -> the XLA compiler options a jitted step is compiled with: none for XLA's default
#: (NATIVE: YNNPACK's convolutions, matrix products and reductions on a CPU); for oneDNN, oneDNN's
#: convolution custom calls, with YNNPACK kept for the matrix products and reductions (the
#: default's other fusion types). The options are CPU ones: a GPU step always takes NATIVE.
CONV_LIBRARIES = {
    NATIVE: {},
    ONEDNN: {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_custom_call": True,
             "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
}

#: The library of the step being traced (:func:`conv_library_scope`); a fresh thread sees NATIVE.
_CONV_LIBRARY = contextvars.ContextVar("resnet_jax_conv_library", default=NATIVE)


def precision_scope(precision: str = "fp32"):
    """The context in which a step is traced for ``precision``: fp32 computes convolutions and matrix
    products at ``jax.lax.Precision.HIGHEST`` (JAX's default takes TF32 on Ampere and later GPUs; a
    CPU computes float32 either way); tf32 and bf16 keep JAX's default."""
    return jax.default_matmul_precision("highest") if precision == "fp32" else contextlib.nullcontext()


def compiler_options(library: str) -> Optional[dict]:
    """``jax.jit``'s ``compiler_options`` for a step whose convolutions ``library`` computes
    (a key of :data:`CONV_LIBRARIES`); None for XLA's default."""
    return dict(CONV_LIBRARIES[library]) or None


@contextlib.contextmanager
def conv_library_scope(library: str):
    """The context in which a step compiled for ``library`` is traced: each :class:`FastConv` then
    measures its paths (:func:`common.autotune.choose`) compiled with the same options, under a
    site of their own."""
    if library not in CONV_LIBRARIES:
        raise ValueError(f"unknown convolution library {library!r}: use one of {sorted(CONV_LIBRARIES)}")
    token = _CONV_LIBRARY.set(library)
    try:
        yield
    finally:
        _CONV_LIBRARY.reset(token)


def choose_conv_library(label: str, shape, precision: str, platform: str, make_run) -> str:
    """The library (a key of :data:`CONV_LIBRARIES`) to compile the training step of the network
    ``label`` with, for batches of ``shape`` on a ``platform`` device, chosen by
    :func:`common.autotune.choose` like a fast path: ``make_run(library)`` returns a callable that
    runs one step compiled that way and waits for it, timed once per machine, network, batch shape
    and ``precision``; ``RESNET_FAST_PATHS=fast`` takes oneDNN, ``native`` XLA's default. A GPU
    takes NATIVE."""
    if platform != "cpu":
        return NATIVE
    site = f"convolution library of {label} on {tuple(shape)} {platform} train {precision}"
    return autotune.choose(FRAMEWORK, site, [ONEDNN, NATIVE], make_run)


def _pair(value):
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value), int(value))


# --- exact agreement -------------------------------------------------------------------------

class BatchNorm(nn.Module):
    """BatchNorm as PyTorch computes it: epsilon 1e-5, momentum 0.1 in PyTorch's convention.

    Normalises over every axis but the last (channels, NHWC) with the biased batch variance and
    updates the running variance (``batch_stats/var``) with the unbiased one, as
    ``torch.nn.BatchNorm2d`` does; the variables have Flax's names (``scale``, ``bias``,
    ``mean``, ``var``). Statistics and normalisation in float32 (mixed precision included); plain
    jnp operations that XLA fuses with the neighbouring bias add, ReLU and residual add.
    """

    use_running_average: Optional[bool] = None
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x, use_running_average: Optional[bool] = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        x = x.astype(jnp.float32)
        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            count = int(np.prod([x.shape[a] for a in axes]))
            if count < 2 and not self.is_initializing():
                raise ValueError(f"BatchNorm in training mode needs more than 1 value per channel, got input shape "
                                 f"{tuple(x.shape)}; use a larger batch or evaluation mode")
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # the biased variance normalises
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1.0 - m) * running_mean.value + m * mean
                running_var.value = (1.0 - m) * running_var.value + m * var * (count / (count - 1.0))
        factor = scale * lax.rsqrt(var + self.epsilon)
        return x * factor + (bias - mean * factor)


def batch_norm(use_running_average: Optional[bool] = None):
    """The chapter's ``nn.BatchNorm(not self.training)`` with PyTorch's constants and running variance."""
    return BatchNorm(use_running_average)


def conv2d(features, kernel_size, strides=1, padding=0, groups=1, use_bias=True, dtype=None) -> nn.Conv:
    """The chapter's ``nn.Conv(features, kernel_size, strides)`` with ``padding`` pixels on every side
    (and Flax's ``feature_group_count`` as ``groups``, ``use_bias``, ``dtype``): Flax's own layer,
    :data:`PLAIN`'s ``conv``."""
    return nn.Conv(features, **_conv_fields(kernel_size, strides, padding, groups, use_bias, dtype))


def _conv_fields(kernel_size, strides, padding, groups, use_bias, dtype):
    (ph, pw) = _pair(padding)
    return dict(kernel_size=_pair(kernel_size), strides=_pair(strides), padding=((ph, ph), (pw, pw)),
                feature_group_count=groups, use_bias=use_bias, dtype=dtype)


class MaxPool(nn.Module):
    """The chapter's max pool (``kernel`` x ``kernel`` windows, ``stride``) with ``padding`` pixels
    (-inf) on every side: Flax's ``nn.max_pool`` as a layer (a function in Flax), :data:`PLAIN`'s
    ``max_pool``."""

    kernel: int
    stride: int
    padding: int = 0

    def __call__(self, x):
        (k, s, p) = (self.kernel, self.stride, self.padding)
        return nn.max_pool(x, window_shape=(k, k), strides=(s, s), padding=((p, p), (p, p)))


def global_avg_pool2d():
    """The global average pool before the classifier, as a function of an NHWC batch: the mean over
    H and W (Flax has no global average pooling layer). Both sets' ``global_pool``."""
    return functools.partial(jnp.mean, axis=(1, 2))


# --- speed -----------------------------------------------------------------------------------

def _first_max(a, b):
    """The larger of ``a`` and ``b``, ``a`` on a tie (so its gradient goes to the first maximum, as in
    PyTorch; ``jnp.maximum`` splits a tie's gradient), NaN where either is NaN."""
    return jnp.where((a >= b) | jnp.isnan(a), a, b)


def _separable_max_pool(x, kernel, stride, padding):
    """Max pooling (NHWC, -inf padding) as running maxima of strided slices along the width, then the
    height: the same maxima as ``nn.max_pool``, the gradient to the first maximum of each window in
    row-major order, and no select-and-scatter in the gradient (slow on XLA's CPU)."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
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
    (:func:`common.fastpaths.visible_taps`); their gradient is exactly zero too.
    """
    kh, kw, channels, filters = kernel.shape  # channels: per group
    (sh, sw), ((ph, _), (pw, _)) = strides, padding
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = conv_output_size((height, width), (kh, kw), (sh, sw), (ph, pw))
    rows, cols = visible_taps(kh, height, sh, ph), visible_taps(kw, width, sw, pw)
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    x = _concat([x[:, :, j:j + sw * (out_w - 1) + 1:sw, :] for j in cols])  # (N, H + 2ph, out_w, cols * C)
    x = _concat([x[:, i:i + sh * (out_h - 1) + 1:sh] for i in rows])  # (N, out_h, out_w, rows * cols * C)
    # The visible taps are a contiguous range: a slice (whose gradient pads), not a gather (scatter-add).
    kernel = kernel[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # (rows, cols, channels, filters)
    taps = len(rows) * len(cols)
    if groups == 1:
        outputs = x.reshape(-1, taps * channels) @ kernel.reshape(taps * channels, filters)
    else:  # pixel p, tap t, group g, channel c of the group, output o of the group
        columns = x.reshape(-1, taps, groups, channels)
        outputs = jnp.einsum("ptgc,tcgo->pgo", columns, kernel.reshape(taps, channels, groups, -1))
    return outputs.reshape(-1, out_h, out_w, filters)


def _conv_by_taps(x, kernel, strides, padding):
    """Convolution (NHWC, kernel HWIO, one group) as one matrix product per kernel tap, summed:
    tap ``(i, j)`` multiplies the input pixels it meets, a strided slice, by ``kernel[i, j]``
    and adds the product into the output pixels whose window meets the input there
    (:func:`common.fastpaths.tap_windows`).

    The products a tap would take with padding are exact zeros, left out: on a 3 x 3 map padded
    by one, 49 of a 3 x 3 kernel's 81 pixel-tap pairs remain (16 of 36 on a 2 x 2 map), where
    im2col (:func:`_conv_as_matmul`) multiplies all of them and copies every column first. The
    same nonzero terms as the convolution, summed tap by tap; the gradients are the products'
    (a slice's gradient pads: no scatter). At 96 x 96 layer4's 3 x 3 maps take it, at 28 x 28
    layer3's 2 x 2 (measured in docs/benchmarks.md)."""
    kh, kw, channels, filters = kernel.shape
    (sh, sw), ((ph, _), (pw, _)) = strides, padding
    batch, height, width = x.shape[0], x.shape[1], x.shape[2]
    out_h, out_w = conv_output_size((height, width), (kh, kw), (sh, sw), (ph, pw))
    outputs = None
    for i, top, bottom, row in tap_windows(kh, height, sh, ph):
        for j, left, right, col in tap_windows(kw, width, sw, pw):
            rows, cols = bottom - top, right - left
            pixels = x[:, row:row + sh * (rows - 1) + 1:sh, col:col + sw * (cols - 1) + 1:sw, :]
            product = (pixels.reshape(-1, channels) @ kernel[i, j]).reshape(batch, rows, cols, filters)
            product = jnp.pad(product, ((0, 0), (top, out_h - bottom), (left, out_w - right), (0, 0)))
            outputs = product if outputs is None else outputs + product
    return outputs


def _concat(parts):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _xla_conv_call(x, kernel, strides, padding, groups, precision):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _xla_conv(x, kernel, strides, padding, groups, precision):
    """XLA's convolution (NHWC, HWIO) with XLA's own two gradient convolutions, the kernel
    gradient's input taken through ``lax.optimization_barrier``.

    The barrier keeps XLA from fusing the input's producers (bias add, BatchNorm, ReLU, residual
    add: recomputed, read in transposed order) into the transpose that lays the input out for the
    kernel gradient; it transposes the stored input instead. The same convolutions, the same
    numbers; on a CPU about 7% less time in ResNet-18's training step at 96 x 96."""
    return _xla_conv_call(x, kernel, strides, padding, groups, precision)


def _xla_conv_forward(x, kernel, strides, padding, groups, precision):
    return _xla_conv_call(x, kernel, strides, padding, groups, precision), (x, kernel)


def _xla_conv_backward(strides, padding, groups, precision, residuals, gradient):
    x, kernel = residuals
    stored = lax.optimization_barrier(x)
    dx = jax.vjp(lambda x: _xla_conv_call(x, kernel, strides, padding, groups, precision), x)[1](gradient)[0]
    dkernel = jax.vjp(lambda k: _xla_conv_call(stored, k, strides, padding, groups, precision), kernel)[1](gradient)[0]
    return dx, dkernel


_xla_conv.defvjp(_xla_conv_forward, _xla_conv_backward)


class FastConv(nn.Conv):
    """``nn.Conv`` (the same fields and variables) computed, where :func:`common.autotune.choose`
    measures it faster on this machine, by :func:`_conv_as_matmul`: convolutions with at most
    ``MATMUL_CONV_MAX_OUTPUT_PIXELS`` output pixels or ``MATMUL_CONV_MAX_IN_CHANNELS`` input
    channels, 1 x 1 convolutions and, on a CPU, grouped ones (XLA's grouped convolution on the
    CPU is slow, its gradient most of all); on a map of at most ``MATMUL_CONV_MAX_OUTPUT_PIXELS``
    output pixels, also by :func:`_conv_by_taps` (one product per kernel tap, padding's zeros
    left out); XLA's own convolution otherwise, on a CPU as :func:`_xla_conv`. A site is
    measured compiled with the library of the step being traced (:func:`conv_library_scope`),
    and named with it where that is not XLA's default; the stem's without the input's gradient
    (at 28 x 28, batch 256, XLA's convolution then takes less than half the matrix product's
    time, where with it the product wins)."""

    @nn.compact
    def __call__(self, inputs):
        kh, kw = self.kernel_size
        channels = inputs.shape[-1]
        groups = self.feature_group_count
        kernel = self.param("kernel", self.kernel_init, (kh, kw, channels // groups, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        # Making the variables needs only their shapes: nothing is measured or chosen for it.
        path = NATIVE if self.is_initializing() else self._path(inputs.shape, inputs.dtype)
        outputs = self._compute(path, inputs, kernel)
        return outputs if bias is None else outputs + bias

    def _path(self, shape, dtype):
        (kh, kw), strides, padding = self.kernel_size, self.strides, self.padding
        out_h, out_w = conv_output_size(shape[1:3], (kh, kw), strides, (padding[0][0], padding[1][0]))
        small = out_h * out_w <= MATMUL_CONV_MAX_OUTPUT_PIXELS or shape[-1] <= MATMUL_CONV_MAX_IN_CHANNELS
        if self.feature_group_count > 1 and jax.default_backend() != "cpu":
            return NATIVE  # XLA's grouped convolution on a GPU
        if not (small or kh * kw == 1 or self.feature_group_count > 1):
            return NATIVE
        library, data = _CONV_LIBRARY.get(), self._takes_the_data()
        site = (f"conv {shape[-1]}->{self.features} k{kh}x{kw} s{strides[0]} p{padding[0][0]} "
                f"g{self.feature_group_count} on {tuple(shape)} {jnp.dtype(dtype).name} {jax.default_backend()} train"
                + ("" if library == NATIVE else f" {library}") + (" of the data" if data else ""))
        # Per-tap products where a tiny map's padding makes im2col's a large share of zeros.
        taps = self.feature_group_count == 1 and kh * kw > 1 and out_h * out_w <= MATMUL_CONV_MAX_OUTPUT_PIXELS
        paths = ["matmul", "taps", NATIVE] if taps else ["matmul", NATIVE]
        return autotune.on_own_thread(lambda: autotune.choose(
            FRAMEWORK, site, paths, lambda path: self._timed_run(path, shape, dtype, library, not data)))

    def _takes_the_data(self) -> bool:
        """Whether this convolution sits in the network's own module, not in a block: the stem's,
        whose input is the batch, which a training step needs no gradient for."""
        return isinstance(self.parent, nn.Module) and not isinstance(self.parent.parent, nn.Module)

    def _compute(self, path, inputs, kernel):
        if path == "matmul":
            return _conv_as_matmul(inputs, kernel, self.strides, self.padding, self.feature_group_count)
        if path == "taps":
            return _conv_by_taps(inputs, kernel, self.strides, self.padding)
        padding = self.padding if isinstance(self.padding, str) else tuple(tuple(pad) for pad in self.padding)
        strides = tuple(self.strides)
        conv = _xla_conv if jax.default_backend() == "cpu" else _xla_conv_call
        return conv(inputs, kernel, strides, padding, self.feature_group_count, self.precision)

    def _timed_run(self, path, shape, dtype, library=NATIVE, input_gradient=True):
        """One forward and backward pass of this convolution taken by ``path`` on fresh arrays,
        compiled for ``library`` (:data:`CONV_LIBRARIES`): the kernel's gradient and, with
        ``input_gradient``, the input's, from a dense upstream gradient as in a step (the gradient
        of a plain sum is a broadcast one, which XLA may fold into the products and time as less
        work than a step's)."""
        kh, kw = self.kernel_size
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.uniform(size=shape).astype(np.float32), dtype)
        kernel = jnp.asarray(rng.uniform(size=(kh, kw, shape[-1] // self.feature_group_count, self.features))
                             .astype(np.float32), dtype)
        out_shape = jax.eval_shape(lambda x, k: self._compute(path, x, k), x, kernel).shape
        upstream = jnp.asarray(rng.uniform(-1, 1, size=out_shape).astype(np.float32))
        step = jax.jit(jax.grad(lambda x, k: jnp.sum(self._compute(path, x, k).astype(jnp.float32) * upstream),
                                argnums=(0, 1) if input_gradient else 1),
                       compiler_options=compiler_options(library))
        return lambda: jax.block_until_ready(step(x, kernel))


def fast_conv2d(features, kernel_size, strides=1, padding=0, groups=1, use_bias=True, dtype=None) -> FastConv:
    """:func:`conv2d` as :class:`FastConv`, :data:`FAST`'s ``conv``: the same fields and variables."""
    return FastConv(features, **_conv_fields(kernel_size, strides, padding, groups, use_bias, dtype))


class SeparableMaxPool(MaxPool):
    """:class:`MaxPool` computed by :func:`_separable_max_pool`, :data:`FAST`'s ``max_pool``."""

    def __call__(self, x):
        return _separable_max_pool(x, self.kernel, self.stride, self.padding)


#: Flax's own layers (``plain=True``, ``RESNET_PLAIN_LAYERS=1``, the chapter's blocks by default).
PLAIN = Layers("plain", conv=conv2d, max_pool=MaxPool, global_pool=global_avg_pool2d)
#: The same with fast paths; the mean over H and W, which XLA fuses, is fast already.
FAST = Layers("fast", conv=fast_conv2d, max_pool=SeparableMaxPool, global_pool=global_avg_pool2d)


def fast_layer_count(net) -> int:
    """How many layers of ``net`` (a :class:`resnet_jax.model.Network`) run a fast path: its
    :class:`FastConv` and :class:`SeparableMaxPool` modules (0 for a network built from
    :data:`PLAIN`), counted as Flax builds them, which it does when it makes the variables (shapes
    only: nothing is computed, measured or chosen)."""
    found = set()

    def count(call, args, kwargs, context):
        if isinstance(context.module, (FastConv, SeparableMaxPool)):
            found.add(context.module.path)
        return call(*args, **kwargs)

    x = jax.ShapeDtypeStruct((2, 32, 32, net.in_channels), jnp.float32)
    with nn.intercept_methods(count):
        jax.eval_shape(lambda x: net.mode(False).init(jax.random.PRNGKey(0), x), x)
    return len(found)
