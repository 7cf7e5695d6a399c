"""ResNet in MXNet Gluon: the chapter's blocks, the network built from :mod:`common.spec`, weights I/O.

Attribute names are torchvision's (``conv1``, ``bn1``, ``layer2.0.downsample.0``, ``fc``), so
Gluon's structural parameter names (``layer1.0.bn1.gamma``) are the canonical names of
:mod:`common.spec` up to Gluon's ``gamma``/``beta`` for BatchNorm's ``weight``/``bias``.
Layouts need no conversion: Gluon's NCHW convolution weights are OIHW and its dense weights
``(out, in)``. Every block is a ``HybridBlock``, so the network hybridizes.

Everything works in both of MXNet's array modes: legacy ``mx.nd`` and NumPy (``npx.set_np()``,
the chapter's), in which Gluon passes ``mxnet.numpy`` arrays and creates its parameters as
such. The fast paths below are written with legacy operators and run on legacy views of those
arrays there (:func:`_legacy_operators`): the same operators, and numbers, in both modes.

Gluon's BatchNorm (1.9.1, native and oneDNN kernels alike) updates its running statistics in
the *backward* pass and with the *biased* batch variance; PyTorch updates them in the forward
pass with the unbiased one. :class:`BatchNorm` below aligns that (see its docstring).
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Dict, List, Mapping, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array

from common.spec import (BN_EPSILON, BN_MOMENTUM, check_input_shape, get_spec, iter_blocks, parameter_shapes,
                         stage_output_shapes)
from common.weights import check_weights

__all__ = [
    "DATA_FORMAT",
    "Residual",
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

#: The layout the network takes.
DATA_FORMAT = "NCHW"

#: Gluon's BatchNorm parameter names -> torchvision's (the only renaming there is).
_CANONICAL_SUFFIX = {"gamma": "weight", "beta": "bias"}

_collectors = threading.local()

#: The NumPy mode's array and symbol types (subclasses of the legacy ``NDArray`` and ``Symbol``).
_NUMPY_TYPES = (mx.np.ndarray, mx.sym.np._Symbol)


def _as_legacy(value):
    """``value``'s NumPy-mode arrays (also inside lists and tuples) as legacy views of them."""
    if isinstance(value, _NUMPY_TYPES):
        return value.as_nd_ndarray()
    if isinstance(value, (list, tuple)):
        return type(value)(_as_legacy(v) for v in value)
    return value


def _as_numpy(value):
    """``value``'s arrays (also inside lists and tuples) as NumPy-mode views of them."""
    if isinstance(value, (mx.nd.NDArray, mx.sym.Symbol)):
        return value if isinstance(value, _NUMPY_TYPES) else value.as_np_ndarray()
    if isinstance(value, (list, tuple)):
        return type(value)(_as_numpy(v) for v in value)
    return value


def _legacy_operators(function):
    """Let ``function``, written with MXNet's legacy operators, run in NumPy mode as well.

    Under ``npx.set_np()`` Gluon hands blocks ``mxnet.numpy`` arrays (and symbols), which
    legacy operators refuse. There ``function`` gets legacy views of its array arguments and
    its array results come back as NumPy-mode views: the same memory and autograd history,
    no copy, and the same operators (so the same numbers) in both modes.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not is_np_array():
            return function(*args, **kwargs)
        return _as_numpy(function(*_as_legacy(args), **{k: _as_legacy(v) for k, v in kwargs.items()}))

    return wrapper


@_legacy_operators
def _relu(F, x, shortcut=None):
    """oneDNN's ReLU (see :class:`Residual`) of ``x``, or of ``x + shortcut``.

    The sum is the legacy one in NumPy mode too: there ``+`` is NumPy's broadcasting add,
    which has no oneDNN kernel, where the legacy sum of two equal shapes has one.
    """
    return F.Activation(x if shortcut is None else x + shortcut, act_type="relu")


def _array(values, ctx=None) -> mx.nd.NDArray:
    """A float32 MXNet array of ``values`` in the active array mode."""
    return (mx.np if is_np_array() else mx.nd).array(np.asarray(values, dtype=np.float32), ctx=ctx, dtype=np.float32)


@contextmanager
def _collect_batch_statistics():
    """While active, every :class:`BatchNorm` traced appends ``(layer, mean, unbiased_var)``."""
    stack = _collectors.__dict__.setdefault("stack", [])
    collected: list = []
    stack.append(collected)
    try:
        yield collected
    finally:
        stack.pop()


def _current_collector():
    stack = getattr(_collectors, "stack", None)
    return stack[-1] if stack else None


class BatchNorm(nn.BatchNorm):
    """Gluon BatchNorm with the project's constants and PyTorch's running-statistics update.

    Normalisation is Gluon's own operator (fast oneDNN kernels, biased batch variance, eps
    1e-5). Gluon's ``momentum`` 0.9 is PyTorch's 0.1 counted the other way round. But MXNet
    1.9.1 moves the running statistics only in the backward pass and with the biased
    variance, so a train-mode forward alone changes nothing and the running variance comes
    out smaller by ``(n - 1) / n``. Inside a :class:`ResNet` (which collects statistics),
    the operator's own update is switched off (momentum 1: ``running * 1 + batch * 0``, exact)
    and the layer hands out the batch mean and the *unbiased* batch variance as extra graph
    outputs; :meth:`ResNet.forward` applies PyTorch's update with them after each train-mode
    forward. Outside a ResNet (the chapter's own ``Sequential``) it behaves as Gluon's.
    """

    def __init__(self, in_channels=0, **kwargs):
        super().__init__(momentum=1.0 - BN_MOMENTUM, epsilon=BN_EPSILON, in_channels=in_channels, **kwargs)

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        collected = _current_collector()
        if collected is None:
            return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
        y, mean, unbiased_var = self._normalize(F, x, gamma, beta, running_mean, running_var)
        collected.append((self, mean, unbiased_var))
        return y

    @_legacy_operators
    def _normalize(self, F, x, gamma, beta, running_mean, running_var):
        """(output, batch mean, unbiased batch variance), the statistics without gradient."""
        # The operator's own batch statistics come out for free: the mean and, as MXNet 1.x
        # keeps it for its backward pass, the inverse standard deviation 1 / sqrt(var + eps)
        # (checked for the native and the oneDNN kernels). F.moments would recompute them
        # and costs ten times the BatchNorm itself on the CPU.
        y, mean, inverse_std = F.BatchNorm(x, gamma, beta, running_mean, running_var, name="fwd",
                                           output_mean_var=True, **dict(self._kwargs, momentum=1.0))
        biased_var = 1.0 / F.square(inverse_std) - self._kwargs["eps"]
        count = F.cast(F.size_array(x), "float32") / F.cast(F.size_array(gamma), "float32")
        unbiased_var = F.broadcast_mul(biased_var, count / (count - 1))
        return y, F.BlockGrad(mean), F.BlockGrad(unbiased_var)


def _update_running_statistics(running, statistics) -> None:
    """PyTorch's ``running = (1 - momentum) * running + momentum * batch``, for each array.

    ``running`` lists the Parameters (means and variances, interleaved) that ``statistics``
    (NDArrays, the same order) update.
    """
    with autograd.pause():
        for param, batch in zip(running, statistics):
            value = param.data(batch.context)
            value[:] = (1.0 - BN_MOMENTUM) * value + BN_MOMENTUM * batch


class _Conv2D(nn.Conv2D):
    """Gluon's Conv2D with exact fast paths for the tiny feature maps of layer3/layer4.

    MXNet 1.9.1's oneDNN computes convolutions whose maps have a few pixels (1 x 1 to
    3 x 3: layer3/layer4 of a 28 x 28 input, layer4 of a 96 x 96 one) far below its
    matrix-multiply speed, the weight gradient of 1 x 1 maps 20x below. There the same
    convolution runs as one matrix product, summing the same terms in another order:

    * input and output of at most 16 pixel pairs (2 x 2 -> 2 x 2, 2 x 2 -> 1 x 1, 1 x 1 ->
      1 x 1): a dense layer from the flattened input map to the flattened output map whose
      weight holds, for each (output pixel, input pixel) pair, the kernel tap joining them
      (zero where none does). That weight is the kernel times a constant 0/1 tap-selection
      matrix (:func:`_tap_selection`), so its gradient flows back to the kernel as a matrix
      product too; taps that only ever meet padding get a zero gradient, as in the
      convolution;
    * output of at most 9 pixels otherwise: ``im2col`` patches times the flattened kernel.

    The input size is read from the data when run imperatively and from ``input_size``
    (set by :class:`ResNet` for the shape it traces) when hybridized; unknown, the layer is
    Gluon's Conv2D.
    """

    input_size = None

    def hybrid_forward(self, F, x, weight, bias=None):
        size = x.shape[2:] if isinstance(x, mx.nd.NDArray) else self.input_size
        kernel, pad, stride = self._kwargs["kernel"], self._kwargs["pad"], self._kwargs["stride"]
        if size is None or self._kwargs["num_group"] != 1 or self._kwargs["dilate"] != (1, 1) or kernel == (1, 1):
            return super().hybrid_forward(F, x, weight, bias)
        out = tuple((n + 2 * p - k) // s + 1 for n, k, p, s in zip(size, kernel, pad, stride))
        if size[0] * size[1] * out[0] * out[1] <= 16 or out[0] * out[1] <= 9:
            return self._matrix_product(F, x, weight, bias, size, out)
        return super().hybrid_forward(F, x, weight, bias)

    @_legacy_operators
    def _matrix_product(self, F, x, weight, bias, size, out):
        """The convolution from ``size`` to ``out`` as one matrix product (see the class)."""
        kernel, pad, stride = self._kwargs["kernel"], self._kwargs["pad"], self._kwargs["stride"]
        pixels, out_pixels = size[0] * size[1], out[0] * out[1]
        if pixels * out_pixels <= 16:
            taps = F.dot(F.reshape(weight, shape=(-1, kernel[0] * kernel[1])),  # (O*C, kh*kw)
                         _tap_selection(F, size, kernel, stride, pad))  # -> (O*C, out_pixels*pixels)
            dense = F.reshape(F.transpose(F.reshape(taps, shape=(-4, self._channels, -1, -4, out_pixels, pixels)),
                                          axes=(0, 2, 1, 3)), shape=(-3, -3))  # (O*out_pixels, C*pixels)
            y = F.FullyConnected(x, dense, None if bias is None else F.repeat(bias, repeats=out_pixels),
                                 num_hidden=self._channels * out_pixels, no_bias=bias is None, flatten=True)
            return F.reshape(y, shape=(0, -1, out[0], out[1]))
        patches = F.im2col(x, kernel=kernel, stride=stride, pad=pad)  # (N, C*kh*kw, Ho*Wo)
        patches = F.reshape(F.transpose(patches, axes=(0, 2, 1)), shape=(-3, 0))  # (N*Ho*Wo, C*kh*kw)
        y = F.FullyConnected(patches, F.reshape(weight, shape=(0, -1)), bias, num_hidden=self._channels,
                             no_bias=bias is None)
        y = F.transpose(F.reshape(y, shape=(-4, -1, out_pixels, 0)), axes=(0, 2, 1))
        return F.reshape(y, shape=(0, 0, out[0], out[1]))


def _tap_selection(F, size, kernel, stride, pad):
    """The (kh*kw, Ho*Wo*H*W) 0/1 matrix whose column (i, j, a, b) selects the kernel tap that
    joins output pixel (i, j) to input pixel (a, b) of an H x W map, or none.

    Built from ``arange`` in the graph itself (it is a few dozen numbers), so the layer needs
    no extra input or parameter. Every value is a small integer, exact in float32.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, kernel, stride, pad
    out_h, out_w = ((n + 2 * p - k) // s + 1 for n, k, p, s in zip(size, kernel, pad, stride))
    column = F.arange(0, out_h * out_w * h * w)
    b, a = column % w, F.floor(column / w) % h
    j, i = F.floor(column / (w * h)) % out_w, F.floor(column / (w * h * out_w))
    row, col = a - i * sh + ph, b - j * sw + pw  # the tap's position in the kernel
    valid = (row >= 0) * (row < kh) * (col >= 0) * (col < kw)
    tap = valid * (row * kw + col + 1) - 1  # -1 where no tap joins them: one_hot gives zeros
    return F.transpose(F.one_hot(tap, depth=kh * kw))


class Residual(nn.HybridBlock):
    """The Residual block of ResNet models (the chapter's signature, torchvision's names).

    The chapter's ``conv3`` (the 1x1 strided convolution on the shortcut, with bias and no
    BatchNorm) is stored as ``downsample[0]``, torchvision's name for it. ``in_channels``
    (0: inferred at the first call, as in the chapter) lets :class:`ResNet` create every
    parameter with its shape at once.
    """

    def __init__(self, num_channels, use_1x1conv=False, strides=1, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        # Registration order is the canonical parameter order of common.spec.
        self.conv1 = _Conv2D(num_channels, kernel_size=3, padding=1, strides=strides, in_channels=in_channels)
        self.bn1 = BatchNorm(in_channels=num_channels)
        self.conv2 = _Conv2D(num_channels, kernel_size=3, padding=1, in_channels=num_channels)
        self.bn2 = BatchNorm(in_channels=num_channels)
        if use_1x1conv:
            self.downsample = nn.HybridSequential()
            self.downsample.add(nn.Conv2D(num_channels, kernel_size=1, strides=strides, in_channels=in_channels))
        else:
            self.downsample = None

    def hybrid_forward(self, F, X):
        # Activation(act_type="relu") rather than F.relu: it is oneDNN's kernel, which takes the
        # convolutions' blocked layout as it is; F.relu is MXNet's generic one, before which
        # every array is reordered to NCHW (and back for the next convolution): 3x slower here.
        # oneDNN's relu maps NaN to 0; ResNet.forward puts the NaN back (see _keep_nan).
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))

        if self.downsample is not None:
            X = self.downsample(X)
        return _relu(F, Y, X)


def resnet_block(num_channels, num_residuals, first_block=False):
    """The chapter's stage: a ``HybridSequential`` of blocks, the first one halving H and W."""
    blk = nn.HybridSequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
    return blk


#: Block type of :class:`common.spec.ResNetSpec` -> how to build one block from its BlockConfig.
BLOCK_BUILDERS = {
    "basic": lambda block: Residual(block.out_channels, block.use_1x1conv, block.stride, in_channels=block.in_channels),
}


class ResNet(nn.HybridBlock):
    """ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..4, fc).

    Calling it checks the input shape, and in training mode (``autograd.record()`` or
    ``autograd.train_mode()``) updates the BatchNorm running statistics as PyTorch does
    (see :class:`BatchNorm`). The global average pool is a plain mean over H and W: the same
    numbers as ``GlobalAvgPool2D`` without that operator's oneDNN kernels, which MXNet 1.9.1
    runs pathologically slowly on large feature maps.
    """

    def __init__(self, arch="resnet18", num_classes=10, in_channels=1, **kwargs):
        super().__init__(**kwargs)
        spec = get_spec(arch)
        parameter_shapes(spec, in_channels, num_classes)  # validates in_channels and num_classes
        self.arch, self.num_classes, self.in_channels = spec.name, num_classes, in_channels
        self.conv1 = nn.Conv2D(spec.stem_channels, kernel_size=spec.stem_kernel, strides=spec.stem_stride,
                               padding=spec.stem_padding, use_bias=spec.conv_bias, in_channels=in_channels)
        self.bn1 = BatchNorm(in_channels=spec.stem_channels)
        self.maxpool = nn.MaxPool2D(pool_size=spec.pool_kernel, strides=spec.pool_stride, padding=spec.pool_padding)
        stages: Dict[int, nn.HybridSequential] = {}
        for block in iter_blocks(spec):
            if block.stage not in stages:
                stages[block.stage] = nn.HybridSequential()
                setattr(self, f"layer{block.stage}", stages[block.stage])
            stages[block.stage].add(BLOCK_BUILDERS[spec.block](block))
        self.num_stages = len(stages)
        self.fc = nn.Dense(num_classes, in_units=spec.feature_channels)
        self._running: List[gluon.Parameter] = []  # filled when traced
        self._input_size = None  # (H, W) the convolutions were last told (see _Conv2D)

    def _stem(self, F, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = _relu(F, x)
        return self.maxpool(x)

    @_legacy_operators
    def _pool(self, F, x):
        return F.mean(x, axis=(2, 3))

    def stages(self, F=mx.nd):
        """(name, function) for each stage of :func:`common.spec.stage_output_shapes`, in order."""
        layers = [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, self.num_stages + 1)]
        return ([("stem", lambda x: self._stem(F, x))] + layers
                + [("pool", lambda x: self._pool(F, x)), ("fc", self.fc)])

    def _set_input_size(self, size) -> None:
        """Tell each 3 x 3 convolution its input size for ``size`` = (H, W) of the network's
        input (None: unknown), and drop the cached graph traced for another size."""
        if size == self._input_size:
            return
        self._input_size = size
        self._clear_cached_op()
        maps = [None] * (self.num_stages + 1)
        if size is not None:
            maps = [hw for _, (_, *hw) in stage_output_shapes(self.arch, self.in_channels, *size)[:-2]]
        for stage, (previous, current) in enumerate(zip(maps, maps[1:]), start=1):
            for i, block in enumerate(getattr(self, f"layer{stage}")):
                block.conv1.input_size = tuple(previous if i == 0 else current) if size else None
                block.conv2.input_size = tuple(current) if size else None

    def hybrid_forward(self, F, x):
        with _collect_batch_statistics() as collected:
            for _, stage in self.stages(F):
                x = stage(x)
        self._running = [p for layer, _, _ in collected for p in (layer.running_mean, layer.running_var)]
        return [x] + [s for _, mean, unbiased_var in collected for s in (mean, unbiased_var)]

    def forward(self, x):
        if not isinstance(x, mx.nd.NDArray):
            # Traced inside another block's graph: logits only, and the running statistics
            # stay as they are (train the ResNet itself, not a block around it). The input
            # size is unknown here, so the convolutions take their general path.
            self._set_input_size(None)
            return super().forward(x)[0]
        check_input_shape(x.shape, self.in_channels, DATA_FORMAT)
        self._set_input_size(tuple(x.shape[2:]))
        training = autograd.is_training()
        if training:
            _check_batch_statistics(self.arch, x.shape, self.in_channels)
        logits, *statistics = super().forward(x)
        if training:
            _update_running_statistics(self._running, statistics)
        return _keep_nan(logits, x, statistics if training else ())


@_legacy_operators
def _keep_nan(logits, x, statistics):
    """``logits``, NaN where PyTorch's would be NaN because of a non-finite input or activation.

    The ReLUs are oneDNN's (see :class:`Residual`), which map NaN to 0 where PyTorch's and
    TensorFlow's keep it, so a NaN image or a diverging training step would come out as
    finite logits and a finite loss. Every ReLU's input is a BatchNorm's output (plus a
    finite shortcut): in training mode it is non-finite only if a batch statistic is, and in
    evaluation mode (finite running statistics and weights, which :func:`import_weights`
    checks) only if the input is. So the logits get 0 times the sum of each example's input
    and, in training, of every batch statistic: 0, or NaN exactly when PyTorch's would be
    (the example's row in evaluation, the whole batch in training). The one case left out:
    finite weights so large that an activation overflows in evaluation mode.
    """
    with autograd.pause():
        guard = mx.nd.sum(x, axis=0, exclude=True).reshape((-1, 1)) * 0.0
        if statistics:
            guard = mx.nd.broadcast_add(guard, mx.nd.concat(*statistics, dim=0).sum() * 0.0)
    return mx.nd.broadcast_add(logits, guard)


def _check_batch_statistics(arch, shape, in_channels) -> None:
    # PyTorch refuses a train-mode BatchNorm over one value per channel (its variance is 0/0).
    smallest = min(h * w for _, (_, h, w) in stage_output_shapes(arch, in_channels, shape[2], shape[3])[:-2])
    if shape[0] * smallest < 2:
        raise ValueError(f"a training-mode forward needs more than 1 value per BatchNorm channel; got input "
                         f"shape {tuple(shape)}: use a batch of at least 2 or larger images")


def resnet(arch="resnet18", num_classes=10, in_channels=1) -> ResNet:
    """The network ``arch`` of :data:`common.spec.RESNET_SPECS`, initialised on the CPU.

    Initial values are Gluon's defaults; training imports :func:`common.weights.init_weights`.
    """
    net = ResNet(arch, num_classes, in_channels)
    net.initialize(ctx=mx.cpu())
    return net


def resnet18(num_classes=10, in_channels=1) -> ResNet:
    return resnet("resnet18", num_classes, in_channels)


def _parameters(net) -> Dict[str, gluon.Parameter]:
    """Gluon's structural name -> Parameter, in registration order."""
    return dict(net._collect_params_with_prefix())


def count_parameters(net) -> int:
    """Number of trainable scalars (BatchNorm running statistics have ``grad_req='null'``)."""
    return sum(int(np.prod(p.shape)) for p in _parameters(net).values() if p.grad_req != "null")


def _architecture(net) -> Tuple[str, int, int]:
    """(arch, in_channels, num_classes) of a ResNet, or of the chapter's (Hybrid)Sequential ResNet-18."""
    if isinstance(net, ResNet):
        return net.arch, net.in_channels, net.num_classes
    params = list(_parameters(net).values())
    convs = [p for p in params if len(p.shape) == 4]
    dense = [p for p in params if len(p.shape) == 2]
    if not convs or not dense:
        raise ValueError(f"{type(net).__name__} is not a ResNet: it has no convolution or no dense layer")
    if convs[0].shape[1] <= 0 or dense[-1].shape[0] <= 0:  # unknown: 0, or -1 in NumPy mode
        raise ValueError(f"{type(net).__name__} has parameters of unknown shape; call it on one batch first")
    return "resnet18", convs[0].shape[1], dense[-1].shape[0]


def _canonical_parameters(net) -> Dict[str, gluon.Parameter]:
    """Canonical name -> the net's Parameter (the one mapping, written once).

    For :class:`ResNet` the structural names are the canonical ones with BatchNorm's
    ``gamma``/``beta`` renamed. The chapter's own network (a ``Sequential`` of
    Gluon's stem layers and our ``Residual`` blocks) has names such as ``0.weight`` or
    ``5.0.downsample.0.bias`` holding the same arrays in the same order, so its entries are
    matched by position, checking each kind and shape (shapes not yet inferred pass).
    """
    params = {}
    for key, param in _parameters(net).items():
        stem, _, kind = key.rpartition(".")
        params[f"{stem}.{_CANONICAL_SUFFIX.get(kind, kind)}" if stem else _CANONICAL_SUFFIX.get(kind, kind)] = param
    shapes = parameter_shapes(*_architecture(net))
    if list(params) == list(shapes):
        return params
    if len(params) != len(shapes):
        raise ValueError(f"{type(net).__name__} has {len(params)} weight arrays, ResNet needs {len(shapes)}; "
                         "build it with resnet18() or the chapter's Residual/resnet_block")
    mapping = {}
    for (key, param), (name, shape) in zip(params.items(), shapes.items()):
        fits = len(param.shape) == len(shape) and all(d in (0, -1, s) for d, s in zip(param.shape, shape))
        if key.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1] or not fits:
            raise ValueError(f"network entry '{key}' {tuple(param.shape)} does not line up with canonical "
                             f"'{name}' {shape}; build it with resnet18() or the chapter's Residual/resnet_block")
        mapping[name] = param
    return mapping


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 NumPy copy (OIHW conv, (out, in) dense), in spec order."""
    return {name: param.data(_context(net)).asnumpy().astype(np.float32, copy=False)
            for name, param in _canonical_parameters(net).items()}


def import_weights(net, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes."""
    arch, in_channels, num_classes = _architecture(net)
    check_weights(weights, arch, in_channels=in_channels, num_classes=num_classes)
    for name, param in _canonical_parameters(net).items():
        # set_data copies to every context the parameter lives on (or waits for deferred init).
        param.set_data(_array(weights[name]))


def _context(net) -> mx.Context:
    for param in _parameters(net).values():
        try:
            return param.list_ctx()[0]
        except RuntimeError:  # not initialised yet
            break
    return mx.cpu()


def _input(net, images) -> mx.nd.NDArray:
    return _array(images, ctx=_context(net))


def forward(net, images, training=False) -> np.ndarray:
    """Logits (NumPy) for an NCHW NumPy batch.

    ``training=True`` normalises with batch statistics and updates the running ones, as a
    training step's forward pass does, without any gradient step.
    """
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
