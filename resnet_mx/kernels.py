"""What :mod:`resnet_mx.model` needs beyond Gluon's own layers: exact agreement and speed.

Exact agreement (always on, also in the plain-layer network): :func:`batch_norm` is Gluon's
BatchNorm with PyTorch's constants and running-statistics update, which a network collects
with :func:`with_batch_statistics` and applies with :func:`forward_as_pytorch`; that also
puts back the NaNs oneDNN's ReLU maps to 0.

Speed (:data:`FAST`, a network's ``layers`` unless ``plain=True``; :mod:`common.fastpaths`):
the residual blocks' convolutions on tiny maps as matrix products (:class:`TinyMapConv2D`) and
the global average pool as a plain mean (:class:`MeanPool2D`). Each computes the same function
as Gluon's layer it stands for (:data:`PLAIN`); the oracle tests run both networks. A traced
graph knows no shapes, so a network tells its tiny-map convolutions their input sizes as the
first step of its forward (:func:`tell_input_size`), which also chooses their path.

Mixed precision (:func:`use_bfloat16`, for ``precision="bf16"``): MXNet's AMP graph pass
(:func:`bfloat16_graph`) rewrites the graph a ``ResNet`` traces to compute its convolutions
and dense layers in bfloat16.

Everything works in both of MXNet's array modes: legacy ``mx.nd`` and NumPy (``npx.set_np()``),
in which Gluon passes ``mxnet.numpy`` arrays. The code below is written with legacy operators
and runs on legacy views of those arrays there (:func:`legacy_operators`): the same operators,
and numbers, in both modes.
"""
from __future__ import annotations

import functools
import json
import threading
from contextlib import contextmanager

import mxnet as mx
from mxnet import autograd
from mxnet.contrib import amp
from mxnet.contrib.amp.lists import symbol_bf16
from mxnet.gluon import nn
from mxnet.util import is_np_array

from common import autotune
from common.autotune import NATIVE
from common.fastpaths import DENSE_CONV_MAX_PIXEL_PAIRS, MATMUL_CONV_MAX_OUTPUT_PIXELS, Layers
from common.spec import BN_EPSILON, BN_MOMENTUM, conv_output_size, iter_convs, stage_output_shapes

__all__ = ["batch_norm", "PLAIN", "FAST", "fast_layer_count", "with_batch_statistics", "forward_as_pytorch",
           "TinyMapConv2D", "MeanPool2D", "block_conv", "tell_input_size", "tap_selection", "legacy_operators",
           "bfloat16_graph", "use_bfloat16", "uses_bfloat16"]

#: What an autotuned choice is measured for (with the machine): this MXNet.
FRAMEWORK = f"MXNet {mx.__version__}"

# --- both array modes ------------------------------------------------------------------------

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


def legacy_operators(function):
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


# --- BatchNorm as PyTorch's --------------------------------------------------------------------

_collectors = threading.local()


@contextmanager
def _collect_batch_statistics():
    """While active, every :func:`batch_norm` layer traced appends ``(layer, mean, unbiased_var)``."""
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


class _BatchNorm(nn.BatchNorm):
    """Gluon's BatchNorm with the project's constants and PyTorch's running-statistics update.

    Normalisation is Gluon's own operator (oneDNN kernels, biased batch variance, eps 1e-5);
    Gluon's ``momentum`` 0.9 is PyTorch's 0.1 counted the other way round. But MXNet 1.9.1
    moves the running statistics only in the backward pass and with the biased variance, so
    a train-mode forward alone changes nothing and the running variance comes out smaller by
    ``(n - 1) / n``. Inside a network's :func:`with_batch_statistics` forward the operator's
    own update is switched off (momentum 1: ``running * 1 + batch * 0``, exact) and the layer
    hands out the batch mean and the *unbiased* batch variance as extra graph outputs, which
    :func:`forward_as_pytorch` applies as PyTorch does. Elsewhere (the chapter's own
    ``Sequential``) it behaves as Gluon's.
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

    @legacy_operators
    def _normalize(self, F, x, gamma, beta, running_mean, running_var):
        """(output, batch mean, unbiased batch variance), the statistics without gradient."""
        # The operator hands out its batch statistics for free: the mean and, as MXNet 1.x keeps
        # it for its backward pass, 1 / sqrt(var + eps) (native and oneDNN kernels alike);
        # F.moments would compute them again, at many times the cost of the BatchNorm.
        y, mean, inverse_std = F.BatchNorm(x, gamma, beta, running_mean, running_var, name="fwd",
                                           output_mean_var=True, **dict(self._kwargs, momentum=1.0))
        biased_var = 1.0 / F.square(inverse_std) - self._kwargs["eps"]
        count = F.cast(F.size_array(x), "float32") / F.cast(F.size_array(gamma), "float32")
        unbiased_var = F.broadcast_mul(biased_var, count / (count - 1))
        return y, F.BlockGrad(mean), F.BlockGrad(unbiased_var)


def batch_norm(num_channels) -> nn.BatchNorm:
    """BatchNorm over ``num_channels`` with PyTorch's epsilon, momentum and running statistics."""
    return _BatchNorm(in_channels=num_channels)


def with_batch_statistics(hybrid_forward):
    """Decorates a network's ``hybrid_forward``: the :func:`batch_norm` layers it runs hand out
    their batch statistics as extra outputs, after the network's own, for :func:`forward_as_pytorch`."""
    @functools.wraps(hybrid_forward)
    def wrapper(net, F, *args, **kwargs):
        with _collect_batch_statistics() as collected:
            out = hybrid_forward(net, F, *args, **kwargs)
        net._running_statistics = [p for layer, _, _ in collected for p in (layer.running_mean, layer.running_var)]
        return [out] + [s for _, mean, unbiased_var in collected for s in (mean, unbiased_var)]

    return wrapper


def forward_as_pytorch(net, forward, x):
    """``forward(x)``, a network's Gluon forward (its ``hybrid_forward`` decorated with
    :func:`with_batch_statistics`), as PyTorch runs it: in training mode the running statistics
    move with this forward pass, and the logits are NaN where PyTorch's would be. Returns the logits.
    """
    if not isinstance(x, mx.nd.NDArray):
        # Traced inside another block's graph: logits only, and the running statistics stay
        # as they are (train the network itself, not a block around it).
        return forward(x)[0]
    training = autograd.is_training()
    if training:
        _check_batch_statistics(net.spec, x.shape, net.in_channels)
    logits, *statistics = forward(x)
    if training:
        _update_running_statistics(net._running_statistics, statistics)
    return _keep_nan(logits, x, statistics if training else ())


def _check_batch_statistics(spec, shape, in_channels) -> None:
    # PyTorch refuses a train-mode BatchNorm over one value per channel (its variance is 0/0).
    # Every BatchNorm's map is a stage's output map or larger (a block's first, before its stride).
    smallest = min(h * w for _, (_, h, w) in stage_output_shapes(spec, in_channels, shape[2], shape[3])[:-2])
    if shape[0] * smallest < 2:
        raise ValueError(f"a training-mode forward needs more than 1 value per BatchNorm channel; got input "
                         f"shape {tuple(shape)}: use a batch of at least 2 or larger images")


def _update_running_statistics(running, statistics) -> None:
    """PyTorch's ``running = (1 - momentum) * running + momentum * batch``, for each array.

    ``running`` lists the Parameters (means and variances, interleaved) that ``statistics``
    (arrays, the same order) update.
    """
    with autograd.pause():
        for param, batch in zip(running, statistics):
            value = param.data(batch.context)
            value[:] = (1.0 - BN_MOMENTUM) * value + BN_MOMENTUM * batch


@legacy_operators
def _keep_nan(logits, x, statistics):
    """``logits``, NaN where PyTorch's would be NaN because of a non-finite input or activation.

    Gluon's ReLU is oneDNN's, which maps NaN to 0 where PyTorch's and TensorFlow's keep it,
    so a NaN image or a diverging training step would come out as finite logits and a finite
    loss. Every ReLU's input is a BatchNorm's output (plus a finite shortcut, in the post-activation
    blocks; a pre-activation block's ReLUs follow its BatchNorms directly): in training
    mode it is non-finite only if a batch statistic is, and in evaluation mode (finite running
    statistics and weights, which ``import_weights`` checks) only if the input is. So the
    logits get 0 times the sum of each example's input and, in training, of every batch
    statistic: 0, or NaN exactly when PyTorch's would be (the example's row in evaluation, the
    whole batch in training). The one case left out: finite weights so large that an
    activation overflows in evaluation mode.
    """
    with autograd.pause():
        guard = mx.nd.sum(x, axis=0, exclude=True).reshape((-1, 1)) * 0.0
        if statistics:
            guard = mx.nd.broadcast_add(guard, mx.nd.concat(*statistics, dim=0).sum() * 0.0)
    return mx.nd.broadcast_add(logits, guard)


# --- the fast layers ---------------------------------------------------------------------------

class TinyMapConv2D(nn.Conv2D):
    """Gluon's Conv2D with exact fast paths for maps of a few pixels (layer3/layer4 at 28 x 28,
    layer4 at 96 x 96), where oneDNN runs far below its matrix-multiply speed.

    There the same convolution runs as one matrix product, summing the same terms in another
    order (:meth:`matrix_product`):

    * input times output pixels at most ``DENSE_CONV_MAX_PIXEL_PAIRS`` (2 x 2 -> 2 x 2,
      2 x 2 -> 1 x 1, 1 x 1 -> 1 x 1), kernels larger than 1 x 1: a dense layer from the
      flattened input map to the flattened output map whose weight is the kernel times a
      constant 0/1 tap-selection matrix (:func:`tap_selection`), so its gradient flows back to
      the kernel as a matrix product too; taps that only ever meet padding get a zero
      gradient, as in the convolution;
    * otherwise at most ``MATMUL_CONV_MAX_OUTPUT_PIXELS`` output pixels: ``im2col`` patches
      times the flattened kernel (for a bottleneck's 1 x 1 convolutions, the map's pixels
      times the kernel).

    Grouped, dilated and strided 1 x 1 convolutions have no fast path here (a block with one is
    built of Gluon's convolutions: :func:`block_conv`).

    The input size is read from the data when run imperatively and from ``input_size`` (set
    before each call by the network, :func:`tell_input_size`) when traced; unknown, the layer
    is Gluon's Conv2D. A subclass with Gluon's constructor and parameters: it adds no state
    but what the network tells it.
    """

    #: The size of the input map, as the network told it for the graph it traces.
    input_size = None
    #: How the network said to compute this layer ("matrix_product" or "native"; see
    #: :func:`_choose_paths`); where no network said, the matrix product.
    path = "matrix_product"

    def takes_matrix_product(self, size):
        """Whether a fast path exists for an input map of ``size``; returns (yes, output size)."""
        kernel, pad, stride = self._kwargs["kernel"], self._kwargs["pad"], self._kwargs["stride"]
        if size is None or not _may_take_matrix_product(self):
            return False, None
        out = conv_output_size(size, kernel, stride, pad)
        return self._takes_dense_layer(size, out) or out[0] * out[1] <= MATMUL_CONV_MAX_OUTPUT_PIXELS, out

    def _takes_dense_layer(self, size, out):
        """Whether the convolution from ``size`` to ``out`` runs as one dense layer (not for 1 x 1
        kernels, where the dense weight would only repeat the kernel on its diagonal)."""
        return self._kwargs["kernel"] != (1, 1) and size[0] * size[1] * out[0] * out[1] <= DENSE_CONV_MAX_PIXEL_PAIRS

    def hybrid_forward(self, F, x, weight, bias=None):
        size = tuple(x.shape[2:]) if isinstance(x, mx.nd.NDArray) else self.input_size
        fast, out = self.takes_matrix_product(size)
        if fast and self.path == "matrix_product":
            return self.matrix_product(F, x, weight, bias, size, out)
        return super().hybrid_forward(F, x, weight, bias)

    def _timed_run(self, path, shape, size, out):
        """One forward and backward pass of this convolution taken by ``path``, on fresh arrays."""
        x = mx.nd.random.uniform(shape=shape)
        weight = mx.nd.random.uniform(shape=(self._channels, shape[1]) + self._kwargs["kernel"])
        bias = None if self.bias is None else mx.nd.zeros((self._channels,))
        for array in (x, weight, bias):
            if array is not None:
                array.attach_grad()

        def run():
            with autograd.record():
                if path == "matrix_product":
                    y = TinyMapConv2D.matrix_product.__wrapped__(self, mx.nd, x, weight, bias, size, out)
                else:
                    y = mx.nd.Convolution(x, weight, bias, **self._kwargs)
            y.backward()
            mx.nd.waitall()
        return run

    @legacy_operators
    def matrix_product(self, F, x, weight, bias, size, out):
        """The convolution from ``size`` to ``out`` as one matrix product (see the class)."""
        kernel, pad, stride = self._kwargs["kernel"], self._kwargs["pad"], self._kwargs["stride"]
        pixels, out_pixels = size[0] * size[1], out[0] * out[1]
        if self._takes_dense_layer(size, out):
            taps = F.dot(F.reshape(weight, shape=(-1, kernel[0] * kernel[1])),  # (O*C, kh*kw)
                         tap_selection(F, size, kernel, stride, pad))  # -> (O*C, out_pixels*pixels)
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


def tap_selection(F, size, kernel, stride, padding):
    """:func:`common.fastpaths.tap_selection` built with ``F`` (``mx.nd`` or ``mx.sym``, legacy):
    the (kh*kw, Ho*Wo*H*W) 0/1 matrix whose column (i, j, a, b) selects the kernel tap that
    joins output pixel (i, j) to input pixel (a, b) of an H x W map, or none.

    Built from ``arange`` in the graph itself (a few dozen numbers), so the layer needs no
    extra input or parameter. Every value is a small integer, exact in float32.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, kernel, stride, padding
    out_h, out_w = conv_output_size(size, kernel, stride, padding)
    column = F.arange(0, out_h * out_w * h * w)
    b, a = column % w, F.floor(column / w) % h
    j, i = F.floor(column / (w * h)) % out_w, F.floor(column / (w * h * out_w))
    row, col = a - i * sh + ph, b - j * sw + pw  # the tap's position in the kernel
    valid = (row >= 0) * (row < kh) * (col >= 0) * (col < kw)
    tap = valid * (row * kw + col + 1) - 1  # -1 where no tap joins them: one_hot gives zeros
    return F.transpose(F.one_hot(tap, depth=kh * kw))


class MeanPool2D(nn.GlobalAvgPool2D):
    """GlobalAvgPool2D as a plain mean over H and W: the same numbers without that operator's
    oneDNN kernel, which MXNet 1.9.1 runs pathologically slowly on large maps."""

    def hybrid_forward(self, F, x):
        return _mean_over_maps(F, x)


@legacy_operators
def _mean_over_maps(F, x):
    return F.mean(x, axis=(2, 3), keepdims=True)


def _tiny_map_convs(block, prefix=""):
    """(structural name, layer) of each :class:`TinyMapConv2D` under ``block``, in order: Gluon's
    attribute names joined by dots (``layer4.0.conv2``), which are the canonical names of a ``ResNet``."""
    for name, child in block._children.items():  # Gluon 1.x has no public child iterator
        if isinstance(child, TinyMapConv2D):
            yield prefix + name, child
        yield from _tiny_map_convs(child, f"{prefix}{name}.")


def _may_take_matrix_product(conv) -> bool:
    """Whether :class:`TinyMapConv2D` has a fast path for ``conv`` at some map size: ungrouped, not
    dilated, and not a strided 1 x 1 convolution."""
    kwargs = conv._kwargs
    return kwargs["num_group"] == 1 and kwargs["dilate"] == (1, 1) and (kwargs["kernel"] != (1, 1)
                                                                         or kwargs["stride"] == (1, 1))


#: Gluon's own layers (with the project's BatchNorm, which both sets share: :func:`batch_norm`).
PLAIN = Layers("plain", conv=nn.Conv2D, max_pool=nn.MaxPool2D, global_pool=nn.GlobalAvgPool2D)
#: The same with the fast paths (the max pool has none). ``conv`` is what the residual blocks'
#: convolutions are built of (:func:`block_conv`); the stem's and the shortcuts' are Gluon's in
#: both sets (``resnet_mx.model``): the stem sees no tiny map at the sizes a network takes, a
#: strided 1 x 1 convolution has no fast path, and only the blocks' convolutions are told their
#: input sizes (:func:`tell_input_size`).
FAST = Layers("fast", conv=TinyMapConv2D, max_pool=nn.MaxPool2D, global_pool=MeanPool2D)


def block_conv(layers, block):
    """The convolution class of a residual block (a :class:`common.spec.BlockConfig`) of a network
    built from ``layers``: ``layers.conv``, but Gluon's for every convolution of a block in which
    one has no fast path (ResNeXt's grouped 3 x 3; the blocks of :mod:`common.spec` have no
    dilated or strided 1 x 1 convolution, so grouped is the only kind).

    All of a block's convolutions or none, decided where the block is built: MXNet 1.9.1 fails on
    oneDNN's convolutions next to matrix-product ones ("could not create a primitive descriptor
    for a reorder primitive"; ResNeXt's grouped 3 x 3 between 1 x 1 matrix products at 32 x 32,
    and see :func:`_choose_paths`), and a block whose convolutions are of one class keeps to the
    rule however it is called (traced, imperatively, stage by stage), with nothing to check later.
    """
    return layers.conv if block.groups == 1 else PLAIN.conv


def tell_input_size(net, x) -> None:
    """The fast layers' step of a ``ResNet``'s forward, before Gluon runs or traces its graph for ``x``.

    A traced graph knows no shapes, so this tells each :class:`TinyMapConv2D` of ``net`` the size of
    its input map for ``x`` (:func:`common.spec.iter_convs`). When ``x``'s size is not the last
    call's, the graph traced for that is dropped (Gluon traces the network anew) and the paths are
    chosen for this size (:func:`_choose_paths`, measured once per machine and size). ``x`` a
    symbol (``net`` traced inside another block's graph): the sizes are unknown, and there the
    convolutions are Gluon's. A network without such layers (built from :data:`PLAIN`) has
    nothing to be told: nothing changes, no graph is dropped.
    """
    size = None
    if isinstance(x, mx.nd.NDArray) and x.ndim == 4 and x.shape[1] == net.in_channels:
        size = tuple(x.shape[2:])  # else a symbol, or a shape the network itself refuses
    if size == net._input_size:
        return
    convs, sizes = list(_tiny_map_convs(net)), {}
    if convs and size is not None:
        sizes = {conv.name: tuple(hw) for conv, hw in iter_convs(net.spec, net.in_channels, *size)}
        unknown = [name for name, _ in convs if name not in sizes]
        if unknown:  # else they would silently stay Gluon's: a block kind whose convolutions have other names
            raise ValueError(f"{', '.join(unknown)}: TinyMapConv2D layers common.spec.iter_convs does not list; a "
                             "block's convolutions take the spec's names (conv1, conv2, conv3) to learn their sizes")
    net._input_size = size
    if not convs:
        return
    net._clear_cached_op()
    for name, conv in convs:
        conv.input_size = sizes.get(name)
    if size is not None:
        _choose_paths(net, [conv for _, conv in convs], size, x.shape[0])


def _choose_paths(net, convs, size, batch) -> None:
    """One path for every convolution of ``convs`` (``net``'s :class:`TinyMapConv2D` layers) on tiny
    maps at this input size, measured over all of them at once (:func:`common.autotune.choose`;
    one graph serves training and inference, so a training step is timed). Not one choice per
    layer: with layer4's first convolution a matrix product and the next ones oneDNN's (96 x 96),
    MXNet 1.9.1 fails ("could not create a primitive descriptor for a reorder primitive"), and so
    it does with a bottleneck's 3 x 3 convolution a matrix product between oneDNN's 1 x 1 ones
    (ResNet-50, layer4 at 96 x 96), or the other way round (ResNeXt's grouped 3 x 3, at 32 x 32);
    hence also :func:`block_conv` builds all of a block's convolutions as fast layers or none."""
    convs = [conv for conv in convs if conv.takes_matrix_product(conv.input_size)[0]]
    if not convs:
        return
    site = f"tiny-map convolutions of {net.spec.label} on {size[0]}x{size[1]}, train"

    def make_run(path):
        runs = [conv._timed_run(path, (batch, conv.weight.shape[1]) + conv.input_size, conv.input_size,
                                conv.takes_matrix_product(conv.input_size)[1]) for conv in convs]
        return lambda: [run() for run in runs]
    path = autotune.choose(FRAMEWORK, site, ["matrix_product", NATIVE], make_run)
    for conv in convs:
        conv.path = path


def fast_layer_count(net) -> int:
    """How many layers of ``net`` are fast layers of this module (:data:`FAST`'s); 0 for a network built
    from :data:`PLAIN`."""
    fast = []
    net.apply(lambda block: fast.append(isinstance(block, (TinyMapConv2D, MeanPool2D))))
    return sum(fast)


# --- mixed precision -----------------------------------------------------------------------------

#: Operators that compute in float32 in a bfloat16 network although AMP's lists would let them
#: take bfloat16 inputs: BatchNorm (so its statistics and its normalisation are float32, and
#: with it the ReLUs, additions and pools after it).
FLOAT32_OPERATORS = ("BatchNorm",)

#: Every operator AMP's bfloat16 lists name; any other one (``im2col`` of :class:`TinyMapConv2D`,
#: NumPy mode's ``_npi_add``) has no bfloat16 kernel in MXNet 1.9.1 and gets float32 inputs.
_AMP_OPERATORS = frozenset(symbol_bf16.BF16_FUNCS + symbol_bf16.FP32_FUNCS + symbol_bf16.BF16_FP32_FUNCS
                           + symbol_bf16.WIDEST_TYPE_CASTS + [op for op, _, _ in symbol_bf16.CONDITIONAL_FP32_FUNCS])


def bfloat16_graph(graph, inputs):
    """``graph`` (a traced network's, ``inputs`` its data symbols) with AMP's casts: convolutions and
    dense layers in bfloat16, fp32 outputs (see :func:`use_bfloat16`)."""
    numpy_mode = isinstance(graph, mx.sym.np._Symbol)
    legacy = graph.as_nd_ndarray() if numpy_mode else graph
    unknown = [node["name"] for node in json.loads(legacy.tojson())["nodes"]
               if node["op"] != "null" and node["op"] not in _AMP_OPERATORS]
    converted = amp.convert_symbol(legacy, target_dtype="bfloat16",
                                   fp32_ops=symbol_bf16.FP32_FUNCS + list(FLOAT32_OPERATORS),
                                   excluded_sym_names=unknown, data_names=[x.name for x in inputs],
                                   cast_optional_params=False)
    return converted.as_np_ndarray() if numpy_mode else converted


def use_bfloat16(net):
    """Let ``net`` (a built ``resnet_mx`` ``ResNet``) compute in mixed precision from now on; returns it.

    It sets the network's ``bfloat16``, so that each graph it traces goes through MXNet's AMP pass
    for ``bfloat16`` before Gluon compiles it (``ResNet._get_graph``, :func:`bfloat16_graph`:
    :func:`mxnet.contrib.amp.convert_symbol`, the pass behind ``amp.convert_hybrid_block``): a
    cast to bfloat16 before each convolution and dense layer (AMP's ``BF16_FUNCS``) for its input
    and weights, a cast of their bfloat16 results back to float32 before each BatchNorm
    (:data:`FLOAT32_OPERATORS`), and every output of the graph in float32: BatchNorm, its
    running statistics, the ReLUs, additions and pools, the logits and the loss are float32, and
    so are the operators AMP's lists do not name. The parameters stay float32: the casts pass
    their gradients back as float32, and SGD updates float32 master weights.

    Per network, unlike ``amp.init()``, which rewrites every operator of ``mx.nd`` and ``mx.sym``
    for the rest of the process. Only in a hybridized graph (``net`` is hybridized here if it
    is not; the Trainer's always is); ``amp.convert_hybrid_block`` would return a new
    ``SymbolBlock`` with copies of the parameters and without the network's own ``forward``
    (which keeps the running statistics PyTorch's). Only a ``ResNet`` has that step: another
    ``HybridBlock`` (a user's ``nn.HybridSequential``) could get it only by a change of its class
    behind its user's back, which this project does not make (:mod:`common.fastpaths`). MXNet
    1.9.1 has bfloat16 kernels on the CPU (oneDNN) only.
    """
    if not isinstance(net, nn.HybridBlock):
        raise ValueError(f"bf16 needs a HybridBlock, whose graph MXNet's AMP pass can convert; {type(net).__name__} "
                         "runs imperatively (build the network with resnet_mx.resnet18())")
    if not hasattr(net, "bfloat16"):
        raise ValueError(f"bf16 needs resnet_mx's ResNet, which passes the graph it traces through MXNet's AMP pass; "
                         f"{type(net).__name__} has no such step (build the network with resnet_mx.resnet18())")
    net.bfloat16 = True
    if not net._active:
        net.hybridize()
    net._clear_cached_op()
    return net


def uses_bfloat16(net) -> bool:
    """Whether ``net`` computes in mixed precision (:func:`use_bfloat16`)."""
    return bool(getattr(net, "bfloat16", False))
