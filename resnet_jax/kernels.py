"""What the JAX network needs beyond Flax's stock layers, kept out of :mod:`resnet_jax.model`.

For exact agreement with the other backends and the NumPy oracle, the chapter's code uses
three helpers by name:

* :func:`conv2d`: Flax's ``nn.Conv`` padded explicitly and symmetrically, as PyTorch pads
  (``padding='same'``, the book's, pads a stride-2 convolution on an even size by (0, 1)).
* :func:`batch_norm`: BatchNorm with PyTorch's epsilon and momentum that updates its running
  variance with the unbiased batch variance (Flax's ``nn.BatchNorm``: momentum 0.99 in the
  other convention, the biased variance), computed in float32 whatever the network computes in.
* :func:`max_pool2d`: Flax's ``nn.max_pool`` padded symmetrically with -inf.

For speed, a network's fast paths (:func:`use_fast_layers`) make :func:`conv2d` build
:class:`FastConv` (on tiny maps, few input channels, 1 x 1 kernels and grouped convolutions:
a matrix product, where :func:`common.autotune.choose` measures it faster; XLA's own
convolution on the CPU takes up to 100 times as long on 2 x 2 and 1 x 1 maps) and
:func:`max_pool2d` a separable max pool: the same function, another computation. Flax builds a
module's layers when it is applied, so the fast paths are switched on around the apply
(:func:`fast_paths`), not bound into layers once as in the other backends.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax import lax

from common import autotune
from common.autotune import NATIVE
from common.fastpaths import MATMUL_CONV_MAX_IN_CHANNELS, MATMUL_CONV_MAX_OUTPUT_PIXELS
from common.spec import BN_EPSILON, BN_MOMENTUM, conv_output_size

__all__ = ["FRAMEWORK", "fast_paths", "fast_paths_enabled", "fast_key", "precision_scope", "conv2d", "batch_norm", "max_pool2d",
           "BatchNorm", "FastConv", "use_fast_layers", "fast_layer_count"]

#: What an autotuned choice is measured for (with the machine): this JAX.
FRAMEWORK = f"JAX {jax.__version__}"

_state = threading.local()


@contextlib.contextmanager
def fast_paths(enabled: bool = True):
    """Layers built inside (Flax builds them while a module is applied or traced) take the fast
    paths where ``enabled``; the framework's own layers otherwise."""
    previous = getattr(_state, "fast", False)
    _state.fast = bool(enabled)
    try:
        yield
    finally:
        _state.fast = previous


def fast_paths_enabled() -> bool:
    return bool(getattr(_state, "fast", False))


def fast_key(fast: bool):
    """What a compiled step depends on besides its module and shapes: ``False`` without fast paths,
    else the choices' mode (``RESNET_FAST_PATHS``: auto, fast or native). A jitted step takes it as
    a static argument and runs under ``fast_paths(key)``, so a change of mode compiles anew."""
    return autotune.fast_paths_mode() if fast else False


def _count_fast_layer():
    counter = getattr(_state, "counter", None)
    if counter is not None:
        counter.append(1)


def precision_scope(precision: str = "fp32"):
    """The context in which a step is traced for ``precision``: fp32 computes convolutions and matrix
    products at ``jax.lax.Precision.HIGHEST`` (JAX's default takes TF32 on Ampere and later GPUs; a
    CPU computes float32 either way); tf32 and bf16 keep JAX's default."""
    return jax.default_matmul_precision("highest") if precision == "fp32" else contextlib.nullcontext()


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


def conv2d(features, kernel_size, strides=1, padding=0, groups=1, use_bias=True, dtype=None):
    """The chapter's ``nn.Conv(features, kernel_size, strides)`` with ``padding`` pixels on every side
    (and Flax's ``feature_group_count`` as ``groups``, ``use_bias``, ``dtype``): Flax's own layer,
    or, built inside :func:`fast_paths`, its fast twin :class:`FastConv` (the same variables)."""
    (ph, pw) = _pair(padding)
    layer = FastConv if fast_paths_enabled() else nn.Conv
    if layer is FastConv:
        _count_fast_layer()
    return layer(features, kernel_size=_pair(kernel_size), strides=_pair(strides), padding=((ph, ph), (pw, pw)),
                 feature_group_count=groups, use_bias=use_bias, dtype=dtype)


def max_pool2d(pool_size, strides, padding=0):
    """The chapter's max pool (``pool_size`` window, ``strides``) with ``padding`` pixels (-inf) on
    every side: Flax's ``nn.max_pool``, or, built inside :func:`fast_paths`, :func:`_separable_max_pool`."""
    (k, _), (s, _), (p, _) = _pair(pool_size), _pair(strides), _pair(padding)
    if fast_paths_enabled():
        _count_fast_layer()
        return functools.partial(_separable_max_pool, kernel=k, stride=s, padding=p)
    return functools.partial(nn.max_pool, window_shape=(k, k), strides=(s, s), padding=((p, p), (p, p)))


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


def _tap_sees_input(tap, out_size, in_size, stride, padding):
    return any(0 <= stride * o + tap - padding < in_size for o in range(out_size))


def _conv_as_matmul(x, kernel, strides, padding, groups=1):
    """Convolution (NHWC, kernel HWIO) as im2col times the kernel matrix; a grouped one as one such
    product per group (an einsum over the groups).

    The columns are gathered in two passes of strided slices of the padded input, along the width
    (one per kernel column), then along the height (one per kernel row): ``kh + kw`` slices, not
    ``kh * kw`` (which XLA takes seconds to compile for the 7 x 7 stem), in the kernel's own (row,
    column, channel) order. The same sums as the convolution. Kernel taps that only ever see
    padding (8 of 9 on a 1x1 map) contribute exact zeros and are left out; their gradient is
    exactly zero too.
    """
    kh, kw, channels, filters = kernel.shape  # channels: per group
    (sh, sw), ((ph, _), (pw, _)) = strides, padding
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = conv_output_size((height, width), (kh, kw), (sh, sw), (ph, pw))
    rows = [i for i in range(kh) if _tap_sees_input(i, out_h, height, sh, ph)]
    cols = [j for j in range(kw) if _tap_sees_input(j, out_w, width, sw, pw)]
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    x = _concat([x[:, :, j:j + sw * (out_w - 1) + 1:sw, :] for j in cols])  # (N, H + 2ph, out_w, cols * C)
    x = _concat([x[:, i:i + sh * (out_h - 1) + 1:sh] for i in rows])  # (N, out_h, out_w, rows * cols * C)
    kernel = kernel[np.array(rows)][:, np.array(cols)]  # (rows, cols, channels, filters)
    taps = len(rows) * len(cols)
    if groups == 1:
        outputs = x.reshape(-1, taps * channels) @ kernel.reshape(taps * channels, filters)
    else:  # pixel p, tap t, group g, channel c of the group, output o of the group
        columns = x.reshape(-1, taps, groups, channels)
        outputs = jnp.einsum("ptgc,tcgo->pgo", columns, kernel.reshape(taps, channels, groups, -1))
    return outputs.reshape(-1, out_h, out_w, filters)


def _concat(parts):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


class FastConv(nn.Conv):
    """``nn.Conv`` (the same fields and variables) computed, where :func:`common.autotune.choose`
    measures it faster on this machine, by :func:`_conv_as_matmul`: convolutions with at most
    ``MATMUL_CONV_MAX_OUTPUT_PIXELS`` output pixels or ``MATMUL_CONV_MAX_IN_CHANNELS`` input
    channels, 1 x 1 convolutions and, on a CPU, grouped ones (XLA's grouped convolution on the
    CPU is slow, its gradient most of all); XLA's own convolution otherwise."""

    @nn.compact
    def __call__(self, inputs):
        kh, kw = self.kernel_size
        channels = inputs.shape[-1]
        groups = self.feature_group_count
        kernel = self.param("kernel", self.kernel_init, (kh, kw, channels // groups, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        path = self._path(inputs.shape, inputs.dtype)
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
        site = (f"conv {shape[-1]}->{self.features} k{kh}x{kw} s{strides[0]} p{padding[0][0]} g{self.feature_group_count}"
                f" on {tuple(shape)} {jnp.dtype(dtype).name} {jax.default_backend()} train")
        return autotune.on_own_thread(lambda: autotune.choose(FRAMEWORK, site, ["matmul", NATIVE],
                                                      lambda path: self._timed_run(path, shape, dtype)))

    def _compute(self, path, inputs, kernel):
        if path == "matmul":
            return _conv_as_matmul(inputs, kernel, self.strides, self.padding, self.feature_group_count)
        return lax.conv_general_dilated(inputs, kernel, self.strides, self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=self.feature_group_count, precision=self.precision)

    def _timed_run(self, path, shape, dtype):
        """One forward and backward pass of this convolution taken by ``path`` on fresh arrays."""
        kh, kw = self.kernel_size
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.uniform(size=shape).astype(np.float32), dtype)
        kernel = jnp.asarray(rng.uniform(size=(kh, kw, shape[-1] // self.feature_group_count, self.features))
                             .astype(np.float32), dtype)
        step = jax.jit(jax.grad(lambda x, k: jnp.sum(self._compute(path, x, k).astype(jnp.float32)), argnums=(0, 1)))
        return lambda: jax.block_until_ready(step(x, kernel))


def use_fast_layers(net):
    """Switch the fast paths on for ``net`` (a :class:`resnet_jax.model.Network`) and return it: its
    :func:`conv2d` and :func:`max_pool2d` layers are built as their fast twins whenever it is
    applied (the same variables, the same function, another computation)."""
    net.fast = True
    return net


def fast_layer_count(net) -> int:
    """How many layers of ``net`` run a fast path (its fast twins, counted by building it once)."""
    if not getattr(net, "fast", False):
        return 0
    counter = []
    _state.counter = counter
    try:
        with fast_paths(True):
            x = jnp.zeros((2, 32, 32, net.in_channels), jnp.float32)
            jax.eval_shape(lambda v, x: net.module.clone(training=False).apply(v, x), net.variables, x)
    finally:
        _state.counter = None
    return len(counter)
