"""The NumPy reference ResNet: the oracle every backend's tests compare against.

A forward pass (eval mode with running statistics, train mode with batch statistics) and a
complete hand-written backward pass, built from :mod:`common.spec` like the backends are,
in float64 so that its own rounding is negligible next to a backend's float32. It imports
no framework, runs on NumPy 1.23 and 2.x, and is fast enough (vectorised im2col
convolutions) for ResNet-18 on small batches in the tests.

Semantics are PyTorch's, which every backend is aligned to: symmetric padding, max-pool
padding with -inf, BatchNorm normalising with the biased batch variance while its running
variance takes the *unbiased* one, ``running = (1 - momentum) * running + momentum * batch``.

The file reads top to bottom in data-flow order: one small forward/backward pair per layer,
then the stem, the residual block and the head, then the network and the public functions.
Each layer's forward returns ``(output, cache)``; its backward takes the output's gradient
and the cache and returns the input's gradient (and the parameters').

``precision="tf32"`` or ``"bf16"`` (:data:`common.hparams.PRECISIONS`) rounds the operands of
every convolution and of the dense layer (inputs and weights, to nearest even) to that format's
mantissa before the float64 products, and for bf16 their results too (mixed precision keeps
activations in bfloat16): the roundings every framework's TF32 or mixed-precision mode makes,
and nothing else. The tests use it to size their bounds for those modes.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from .naming import is_buffer, parameter_shapes
from .optim import MOMENTUM_PREFIX, STEP_STATE
from .sharding import shard_slices
from .spec import BN_EPSILON, BN_MOMENTUM, block_convs, check_input_shape, get_spec, iter_blocks
from .weights import check_weights

__all__ = [
    "round_mantissa",
    "forward",
    "loss_and_gradients",
    "evaluation_logits",
    "sgd_step",
    "optimizer_step",
    "sharded_sgd_step",
    "step_batch",
    "batch_norm_fed_conv_biases",
]

Array = np.ndarray


# --- layers: forward and backward ---------------------------------------------------------

#: Explicit mantissa bits kept by each precision's products (float32 keeps all 23).
MANTISSA_BITS = {"fp32": 23, "tf32": 10, "bf16": 7}


def round_mantissa(x: Array, precision: str = "fp32") -> Array:
    """``x`` rounded to float32 and then to ``precision``'s mantissa (to nearest, ties to even),
    as float64: what a TF32 or bfloat16 operand holds of a float32 value."""
    if precision not in MANTISSA_BITS:
        raise ValueError(f"precision must be one of {', '.join(MANTISSA_BITS)}, got {precision!r}")
    single = np.asarray(x, dtype=np.float32)
    drop = 23 - MANTISSA_BITS[precision]
    if drop == 0:
        return single.astype(np.float64)
    bits = np.atleast_1d(single).view(np.uint32).astype(np.uint64)
    drop, half, one = np.uint64(drop), np.uint64((1 << (drop - 1)) - 1), np.uint64(1)  # NumPy 1.23 shifts need one type
    bits = ((bits + half + ((bits >> drop) & one)) >> drop) << drop
    rounded = (bits & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32).astype(np.float64)
    return rounded.reshape(single.shape)


def _windows(x: Array, kernel: int, stride: int) -> Array:
    """View of every ``kernel x kernel`` window of ``x`` (N, C, H, W) at ``stride``.

    Shape (N, C, Ho, Wo, kernel, kernel); no copy.
    """
    view = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    return view[:, :, ::stride, ::stride]


def conv2d(x: Array, weight: Array, bias: Optional[Array], stride: int, padding: int, groups: int = 1):
    """Cross-correlation of ``x`` (N, C, H, W) with ``weight`` (O, C / groups, k, k), zero padding.

    Computed as one matrix product per group over the im2col matrix (rows: output pixels,
    columns: C * k * k, a group's channels side by side), which the backward pass reuses for
    the weight gradient. Group g maps input channels g*C/groups.. to outputs g*O/groups..
    """
    n, channels, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    if channels % groups or out_channels % groups or weight.shape[1] != channels // groups:
        raise ValueError(f"conv2d: {channels} input and {out_channels} output channels do not split into "
                         f"{groups} groups of weight {weight.shape}")
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = _windows(padded, kernel, stride)
    out_h, out_w = windows.shape[2], windows.shape[3]
    columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, groups, -1)  # (P, G, C/G*k*k)
    kernels = weight.reshape(groups, out_channels // groups, -1)  # (G, O/G, C/G*k*k)
    out = np.concatenate([columns[:, g] @ kernels[g].T for g in range(groups)], axis=1)  # (P, O)
    if bias is not None:
        out += bias
    out = out.reshape(n, out_h, out_w, out_channels).transpose(0, 3, 1, 2)
    cache = (columns, weight, bias is not None, x.shape, stride, padding, groups)
    return np.ascontiguousarray(out), cache


def conv2d_backward(d_out: Array, cache):
    """Gradients of :func:`conv2d` for input, weight and bias (None without a bias)."""
    columns, weight, has_bias, x_shape, stride, padding, groups = cache
    n, channels, height, width = x_shape
    out_channels, _, kernel, _ = weight.shape
    out_h, out_w = d_out.shape[2], d_out.shape[3]
    d_out_rows = d_out.transpose(0, 2, 3, 1).reshape(-1, groups, out_channels // groups)  # (P, G, O/G)
    d_weight = np.stack([d_out_rows[:, g].T @ columns[:, g] for g in range(groups)]).reshape(weight.shape)
    d_bias = d_out_rows.sum(axis=0).reshape(-1) if has_bias else None
    kernels = weight.reshape(groups, out_channels // groups, -1)
    d_columns = np.concatenate([d_out_rows[:, g] @ kernels[g] for g in range(groups)], axis=1)
    d_columns = d_columns.reshape(n, out_h, out_w, channels, kernel, kernel)
    # col2im: add each kernel offset's contribution back onto the padded input.
    d_padded = np.zeros((n, channels, height + 2 * padding, width + 2 * padding))
    for i in range(kernel):
        for j in range(kernel):
            d_padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += (
                d_columns[:, :, :, :, i, j].transpose(0, 3, 1, 2)
            )
    d_x = d_padded[:, :, padding:padding + height, padding:padding + width]
    return d_x, d_weight, d_bias


def batch_norm_train(x: Array, gamma: Array, beta: Array):
    """BatchNorm with the statistics of this batch (per channel over N, H, W).

    Normalises with the biased variance; also returns the batch mean and the *unbiased*
    variance, which are what PyTorch feeds into the running statistics.
    """
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if count < 2:
        raise ValueError(f"train-mode BatchNorm needs more than 1 value per channel, got input shape {x.shape}")
    mean = x.mean(axis=(0, 2, 3))
    centred = x - mean[None, :, None, None]
    variance = (centred ** 2).mean(axis=(0, 2, 3))
    inverse_std = 1.0 / np.sqrt(variance + BN_EPSILON)
    normalised = centred * inverse_std[None, :, None, None]
    out = normalised * gamma[None, :, None, None] + beta[None, :, None, None]
    unbiased_variance = variance * count / (count - 1)
    return out, (normalised, inverse_std, gamma), mean, unbiased_variance


def batch_norm_eval(x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array) -> Array:
    """BatchNorm with the running statistics (inference)."""
    scale = gamma / np.sqrt(running_var + BN_EPSILON)
    shift = beta - running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def update_running_statistics(running_mean: Array, running_var: Array, batch_mean: Array,
                              batch_unbiased_var: Array) -> Tuple[Array, Array]:
    """PyTorch's update: ``running = (1 - momentum) * running + momentum * batch``."""
    new_mean = (1.0 - BN_MOMENTUM) * running_mean + BN_MOMENTUM * batch_mean
    new_var = (1.0 - BN_MOMENTUM) * running_var + BN_MOMENTUM * batch_unbiased_var
    return new_mean, new_var


def batch_norm_backward(d_out: Array, cache):
    """Gradients of :func:`batch_norm_train` for input, gamma and beta.

    The batch statistics depend on the input, hence the two subtracted terms; they make
    the input gradient sum to zero per channel, which is why a convolution bias feeding a
    train-mode BatchNorm gets a zero gradient.
    """
    normalised, inverse_std, gamma = cache
    d_gamma = (d_out * normalised).sum(axis=(0, 2, 3))
    d_beta = d_out.sum(axis=(0, 2, 3))
    count = d_out.shape[0] * d_out.shape[2] * d_out.shape[3]
    d_normalised = d_out * gamma[None, :, None, None]
    d_x = (inverse_std / count)[None, :, None, None] * (
        count * d_normalised
        - d_normalised.sum(axis=(0, 2, 3))[None, :, None, None]
        - normalised * (d_normalised * normalised).sum(axis=(0, 2, 3))[None, :, None, None]
    )
    return d_x, d_gamma, d_beta


def relu(x: Array):
    out = np.maximum(x, 0.0)
    return out, out > 0


def relu_backward(d_out: Array, cache) -> Array:
    return d_out * cache


def max_pool2d(x: Array, kernel: int, stride: int, padding: int):
    """Max pooling; padding is -inf, so a padded position never wins (PyTorch's semantics)."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    windows = _windows(padded, kernel, stride)
    n, channels, out_h, out_w = windows.shape[:4]
    flat = windows.reshape(n, channels, out_h, out_w, kernel * kernel)
    # Ties go to the first position in row-major order, as in PyTorch.
    winner = flat.argmax(axis=-1)
    out = np.take_along_axis(flat, winner[..., None], axis=-1)[..., 0]
    return out, (winner, x.shape, kernel, stride, padding)


def max_pool2d_backward(d_out: Array, cache) -> Array:
    winner, x_shape, kernel, stride, padding = cache
    n, channels, height, width = x_shape
    out_h, out_w = d_out.shape[2], d_out.shape[3]
    d_padded = np.zeros((n, channels, height + 2 * padding, width + 2 * padding))
    for i in range(kernel):
        for j in range(kernel):
            d_padded[:, :, i:i + stride * out_h:stride,
                     j:j + stride * out_w:stride] += d_out * (winner == i * kernel + j)
    return d_padded[:, :, padding:padding + height, padding:padding + width]


def global_avg_pool(x: Array):
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(d_out: Array, cache) -> Array:
    n, channels, height, width = cache
    return np.broadcast_to(d_out[:, :, None, None] / (height * width), cache).copy()


def dense(x: Array, weight: Array, bias: Array):
    """``x @ weight.T + bias`` with ``weight`` as (out, in)."""
    return x @ weight.T + bias, (x, weight)


def dense_backward(d_out: Array, cache):
    x, weight = cache
    return d_out @ weight, d_out.T @ x, d_out.sum(axis=0)


def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Tuple[float, Array]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    With ``label_smoothing`` ``eps`` the targets are ``(1 - eps) * one_hot + eps / classes``
    (PyTorch's ``CrossEntropyLoss(label_smoothing=eps)``).
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    targets = np.full(logits.shape, label_smoothing / logits.shape[1])
    targets[rows, labels] += 1.0 - label_smoothing
    loss = -float((targets * log_probabilities).sum(axis=1).mean())
    d_logits = np.exp(log_probabilities) - targets
    return loss, d_logits / len(labels)


# --- the network: stem, residual blocks, head ------------------------------------------------

class _Pass:
    """One pass through the network: parameters, mode, and what the backward pass needs.

    The network's walk (:func:`_network`) makes one call per layer (``conv``, ``bn``, ``relu``,
    ``max_pool``, ``add``, ``avg_pool``, ``dense``) and computes nothing itself; so another pass
    with the same methods walks the same network: :mod:`common.onnx_model`'s emits an ONNX node
    per call.

    ``caches`` holds each layer's cache under its canonical name (``layer2.0.bn1``) or a
    name for the parameter-free layers (``layer2.0.relu2``); ``state`` collects the
    updated running statistics of a train-mode pass.
    """

    def __init__(self, params: Mapping[str, Array], training: bool, precision: str = "fp32"):
        self.params = params
        self.training = training
        self.precision = precision
        self.caches: Dict[str, object] = {}
        self.state: Dict[str, Array] = {}
        self.grads: Dict[str, Array] = {}

    # forward, one call per layer

    def operands(self, *arrays: Array):
        """A product's operands as ``precision`` holds them (unchanged in fp32)."""
        if self.precision == "fp32":
            return arrays
        return tuple(round_mantissa(a, self.precision) for a in arrays)

    def result(self, out: Array) -> Array:
        """A product's result as ``precision`` stores it (bf16 activations; TF32 and fp32 keep float32)."""
        return round_mantissa(out, "bf16") if self.precision == "bf16" else out

    def conv(self, name: str, x: Array, stride: int, padding: int, groups: int = 1) -> Array:
        x, weight = self.operands(x, self.params[f"{name}.weight"])
        out, self.caches[name] = conv2d(x, weight, self.params.get(f"{name}.bias"), stride, padding, groups)
        return self.result(out)

    def bn(self, name: str, x: Array) -> Array:
        p = self.params
        gamma, beta = p[f"{name}.weight"], p[f"{name}.bias"]
        if not self.training:
            return batch_norm_eval(x, gamma, beta, p[f"{name}.running_mean"], p[f"{name}.running_var"])
        out, self.caches[name], mean, unbiased_var = batch_norm_train(x, gamma, beta)
        new_mean, new_var = update_running_statistics(p[f"{name}.running_mean"], p[f"{name}.running_var"],
                                                      mean, unbiased_var)
        self.state[f"{name}.running_mean"] = new_mean
        self.state[f"{name}.running_var"] = new_var
        return out

    def relu(self, name: str, x: Array) -> Array:
        out, self.caches[name] = relu(x)
        return out

    def max_pool(self, name: str, x: Array, kernel: int, stride: int, padding: int) -> Array:
        out, self.caches[name] = max_pool2d(x, kernel, stride, padding)
        return out

    def add(self, name: str, x: Array, y: Array) -> Array:
        """The residual sum (``name`` says which; nothing to cache)."""
        return x + y

    def avg_pool(self, name: str, x: Array) -> Array:
        """Global average pooling to (N, C)."""
        out, self.caches[name] = global_avg_pool(x)
        return out

    def dense(self, name: str, x: Array) -> Array:
        x, weight = self.operands(x, self.params[f"{name}.weight"])
        out, self.caches[name] = dense(x, weight, self.params[f"{name}.bias"])
        return self.result(out)

    # backward, the same calls in reverse

    def conv_backward(self, name: str, d_out: Array) -> Array:
        d_x, d_weight, d_bias = conv2d_backward(d_out, self.caches[name])
        self.grads[f"{name}.weight"] = d_weight
        if d_bias is not None:
            self.grads[f"{name}.bias"] = d_bias
        return d_x

    def bn_backward(self, name: str, d_out: Array) -> Array:
        d_x, self.grads[f"{name}.weight"], self.grads[f"{name}.bias"] = batch_norm_backward(d_out, self.caches[name])
        return d_x

    def relu_backward(self, name: str, d_out: Array) -> Array:
        return relu_backward(d_out, self.caches[name])


def _stem(run: _Pass, x: Array, spec) -> Array:
    x = run.conv("conv1", x, spec.stem_stride, spec.stem_padding)
    x = run.bn("bn1", x)
    x = run.relu("relu", x)
    if spec.max_pool:  # the small stem has none
        x = run.max_pool("maxpool", x, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
    return x


def _stem_backward(run: _Pass, d_out: Array, spec) -> Array:
    d = max_pool2d_backward(d_out, run.caches["maxpool"]) if spec.max_pool else d_out
    d = run.relu_backward("relu", d)
    d = run.bn_backward("bn1", d)
    return run.conv_backward("conv1", d)


def _shortcut(run: _Pass, x: Array, block, spec) -> Array:
    """The projection: a strided 1x1 convolution, and in torchvision's style a BatchNorm after it."""
    y = run.conv(f"{block.name}.downsample.0", x, block.stride, 0)
    return run.bn(f"{block.name}.downsample.1", y) if spec.norm_shortcut else y


def _shortcut_backward(run: _Pass, d_out: Array, block, spec) -> Array:
    d = run.bn_backward(f"{block.name}.downsample.1", d_out) if spec.norm_shortcut else d_out
    return run.conv_backward(f"{block.name}.downsample.0", d)


def _block(run: _Pass, x: Array, block, spec) -> Array:
    """Post-activation (basic or bottleneck): conv -> BN -> ReLU for each convolution but the last,
    conv -> BN for the last; plus the shortcut (identity or :func:`_shortcut`), then ReLU."""
    convs = block_convs(block, spec, shortcut=False)
    y = x
    for number, conv in enumerate(convs, start=1):
        y = run.conv(conv.name, y, conv.stride, conv.padding, conv.groups)
        y = run.bn(f"{block.name}.bn{number}", y)
        if number < len(convs):
            y = run.relu(f"{block.name}.relu{number}", y)
    shortcut = _shortcut(run, x, block, spec) if block.use_1x1conv else x
    return run.relu(f"{block.name}.relu_out", run.add(f"{block.name}.add", y, shortcut))


def _block_backward(run: _Pass, d_out: Array, block, spec) -> Array:
    convs = block_convs(block, spec, shortcut=False)
    d_sum = run.relu_backward(f"{block.name}.relu_out", d_out)
    d_shortcut = _shortcut_backward(run, d_sum, block, spec) if block.use_1x1conv else d_sum
    d = d_sum
    for number in range(len(convs), 0, -1):
        if number < len(convs):
            d = run.relu_backward(f"{block.name}.relu{number}", d)
        d = run.bn_backward(f"{block.name}.bn{number}", d)
        d = run.conv_backward(convs[number - 1].name, d)
    return d + d_shortcut


def _preact_block(run: _Pass, x: Array, block, spec) -> Array:
    """Pre-activation: BN -> ReLU -> conv for each convolution, plus the shortcut: the input itself,
    or the 1x1 projection of the block's pre-activated input (the first BN and ReLU), as in He et
    al.'s code and Gluon's ResNet V2."""
    y = x
    activated = None
    for number, conv in enumerate(block_convs(block, spec, shortcut=False), start=1):
        y = run.bn(f"{block.name}.bn{number}", y)
        y = run.relu(f"{block.name}.relu{number}", y)
        if number == 1:
            activated = y
        y = run.conv(conv.name, y, conv.stride, conv.padding, conv.groups)
    shortcut = _shortcut(run, activated, block, spec) if block.use_1x1conv else x
    return run.add(f"{block.name}.add", y, shortcut)


def _preact_block_backward(run: _Pass, d_out: Array, block, spec) -> Array:
    convs = block_convs(block, spec, shortcut=False)
    d_activated = _shortcut_backward(run, d_out, block, spec) if block.use_1x1conv else None
    d = d_out
    for number in range(len(convs), 0, -1):
        d = run.conv_backward(convs[number - 1].name, d)
        if number == 1 and d_activated is not None:
            d = d + d_activated
        d = run.relu_backward(f"{block.name}.relu{number}", d)
        d = run.bn_backward(f"{block.name}.bn{number}", d)
    return d if block.use_1x1conv else d + d_out


def _head(run: _Pass, x: Array, spec) -> Array:
    if spec.preact:  # the final BatchNorm and ReLU of a pre-activation network
        x = run.relu("norm_relu", run.bn("norm", x))
    return run.dense("fc", run.avg_pool("avgpool", x))


def _head_backward(run: _Pass, d_logits: Array, spec) -> Array:
    d, run.grads["fc.weight"], run.grads["fc.bias"] = dense_backward(d_logits, run.caches["fc"])
    d = global_avg_pool_backward(d, run.caches["avgpool"])
    if spec.preact:
        d = run.bn_backward("norm", run.relu_backward("norm_relu", d))
    return d


def _block_functions(spec):
    return (_preact_block, _preact_block_backward) if spec.preact else (_block, _block_backward)


def _network(run: _Pass, x: Array, spec) -> Array:
    block_forward, _ = _block_functions(spec)
    x = _stem(run, x, spec)
    for block in iter_blocks(spec):
        x = block_forward(run, x, block, spec)
    return _head(run, x, spec)


def _network_backward(run: _Pass, d_logits: Array, spec) -> None:
    _, block_backward = _block_functions(spec)
    d = _head_backward(run, d_logits, spec)
    for block in reversed(list(iter_blocks(spec))):
        d = block_backward(run, d, block, spec)
    _stem_backward(run, d, spec)


# --- public functions --------------------------------------------------------------------------

def _prepare(weights: Mapping[str, Array], images, arch):
    """Check weights and images against the spec; return (spec, float64 params, float64 images)."""
    spec = get_spec(arch)
    check_weights(weights, spec, source="oracle weights")
    params = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    images = np.asarray(images)
    check_input_shape(images.shape, in_channels=params["conv1.weight"].shape[1], data_format="NCHW")
    return spec, params, images.astype(np.float64)


def _check_labels(labels, batch_size: int, num_classes: int) -> Array:
    labels = np.asarray(labels)
    if labels.shape != (batch_size,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected integer labels of shape ({batch_size},), got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def forward(weights: Mapping[str, Array], images, training: bool = False, return_state: bool = False,
            arch="resnet18", precision: str = "fp32"):
    """Logits (N, num_classes) of the network with ``weights`` on NCHW ``images``, float64.

    ``training=False`` uses the running statistics; ``training=True`` the batch statistics.
    With ``return_state=True`` also returns the updated running statistics (canonical
    names, float64) of a train-mode pass; for an eval-mode pass they are the unchanged
    ones.
    """
    spec, params, x = _prepare(weights, images, arch)
    run = _Pass(params, training, precision)
    logits = _network(run, x, spec)
    if not return_state:
        return logits
    if not training:
        run.state = {name: value.copy() for name, value in params.items() if is_buffer(name)}
    return logits, run.state


def evaluation_logits(weights: Mapping[str, Array], images, tta: str = "none", arch="resnet18",
                      precision: str = "fp32") -> Array:
    """Eval-mode logits as an evaluation step computes them: with ``tta="flip"`` the mean of the
    logits of the images and of their mirror images (:data:`common.optim.TTA`)."""
    logits = forward(weights, images, arch=arch, precision=precision)
    if tta == "flip":
        logits = (logits + forward(weights, np.asarray(images)[..., ::-1], arch=arch, precision=precision)) / 2
    elif tta != "none":
        raise ValueError(f"unknown test-time augmentation {tta!r}")
    return logits


def _train_pass(weights, images, labels, arch, precision="fp32", label_smoothing=0.0):
    spec, params, x = _prepare(weights, images, arch)
    labels = _check_labels(labels, x.shape[0], params["fc.weight"].shape[0])
    run = _Pass(params, training=True, precision=precision)
    logits = _network(run, x, spec)
    loss, d_logits = softmax_cross_entropy(logits, labels, label_smoothing)
    _network_backward(run, d_logits, spec)
    order = [name for name in params if not is_buffer(name)]
    return loss, {name: run.grads[name] for name in order}, run.state


def loss_and_gradients(weights: Mapping[str, Array], images, labels, arch="resnet18",
                       precision: str = "fp32", label_smoothing: float = 0.0) -> Tuple[float, Dict[str, Array]]:
    """Mean softmax cross-entropy in train mode and its gradient for every trainable array.

    Gradients are float64, keyed by canonical name in the weights' order.
    """
    loss, gradients, _ = _train_pass(weights, images, labels, arch, precision, label_smoothing)
    return loss, gradients


def sgd_step(weights: Mapping[str, Array], images, labels, lr: float, arch="resnet18",
             precision: str = "fp32") -> Tuple[float, Dict[str, Array]]:
    """One step of the chapter's training: plain SGD (no momentum, no weight decay).

    Returns the loss before the step and the new float32 weights: trainable arrays moved
    by ``-lr * gradient``, running statistics updated by the same train-mode pass.
    """
    loss, gradients, state = _train_pass(weights, images, labels, arch, precision)
    new_weights = {}
    for name, value in weights.items():
        if name in gradients:
            new_value = np.asarray(value, np.float64) - lr * gradients[name]
        else:
            new_value = state[name]
        new_weights[name] = new_value.astype(np.float32)
    return loss, new_weights


def optimizer_step(weights: Mapping[str, Array], images, labels, recipe, state: Optional[Mapping[str, Array]] = None,
                   arch="resnet18", precision: str = "fp32") -> Tuple[float, Dict[str, Array], Dict[str, Array]]:
    """One training step of ``recipe`` (a :class:`common.optim.Recipe`): the math every backend's
    optimizer and schedule are configured to equal (see :mod:`common.optim`).

    ``state`` is the optimizer state in canonical form (``step`` and, with momentum, each
    ``momentum_buffer.<name>``; ``None``: before the first step). Returns the loss before the step
    (label smoothing included), the new float32 weights and the new state (buffers in float64).
    """
    state = dict(state or {})
    step = int(state.get(STEP_STATE, 0))
    lr = recipe.schedule.lr_at(step)
    loss, gradients, running = _train_pass(weights, images, labels, arch, precision, recipe.label_smoothing)
    new_weights, new_state = {}, {STEP_STATE: np.int64(step + 1)}
    for name, value in weights.items():
        if name not in gradients:
            new_weights[name] = running[name].astype(np.float32)
            continue
        w = np.asarray(value, np.float64)
        g = gradients[name] + recipe.weight_decay * w
        if recipe.momentum:
            buffer = recipe.momentum * np.asarray(state.get(MOMENTUM_PREFIX + name, 0.0), np.float64) + g
            new_state[MOMENTUM_PREFIX + name] = buffer
            g = g + recipe.momentum * buffer if recipe.nesterov else buffer
        new_weights[name] = (w - lr * g).astype(np.float32)
    return loss, new_weights, new_state


def sharded_sgd_step(weights: Mapping[str, Array], images, labels, lr: float, world_size: int, arch="resnet18",
                     precision: str = "fp32") -> Tuple[float, Dict[str, Array]]:
    """One data-parallel step on ``world_size`` workers: what every backend's distributed
    engine computes.

    The batch is split by :func:`common.sharding.shard_slices`. Each worker runs the train-mode pass on its
    shard (BatchNorm with that shard's statistics, the mean loss over the shard) and updates the
    running statistics from them; the gradients are averaged over the workers, every worker
    applies ``-lr * mean gradient``, and the running statistics become the mean of the
    workers' updated ones. Returns the mean of the shards' losses (the loss of the examples
    used) and the new float32 weights. ``world_size=1`` is :func:`sgd_step`.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    shards = shard_slices(len(labels), world_size)
    if not shards:
        raise ValueError(f"a batch of {len(labels)} examples cannot be split over {world_size} workers")
    passes = [_train_pass(weights, images[part], labels[part], arch, precision) for part in shards]
    new_weights = {}
    for name, value in weights.items():
        if name in passes[0][1]:
            gradient = sum(gradients[name] for _, gradients, _ in passes) / len(passes)
            new_value = np.asarray(value, np.float64) - lr * gradient
        else:
            new_value = sum(state[name] for _, _, state in passes) / len(passes)
        new_weights[name] = new_value.astype(np.float32)
    return float(np.mean([loss for loss, _, _ in passes])), new_weights


def step_batch(seed: int, batch_size: int, size: int, in_channels: int = 1,
               num_classes: int = 10) -> Tuple[Array, Array]:
    """A deterministic batch for the training-step tests: float32 NCHW images uniform in
    [0, 1] and int64 labels, both drawn from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, (batch_size, in_channels, size, size)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch_size, dtype=np.int64)
    return images, labels


def batch_norm_fed_conv_biases(arch="resnet18", in_channels=1, num_classes=10) -> List[str]:
    """Names of convolution biases whose train-mode gradient is zero: their output reaches the loss
    only through train-mode BatchNorms, which subtract the batch mean and so absorb any constant.

    In the post-activation styles, each convolution of the stem and of a block's residual branch
    (the one feeding a BatchNorm straight away; not the shortcut's). In a pre-activation network,
    every convolution: a block's output feeds the next block's first BatchNorm and, through the
    identity shortcuts, the final ``norm``, and a projection shortcut reads the pre-activated
    input. Tests compare these gradients in absolute terms only.
    """
    spec = get_spec(arch)
    names = parameter_shapes(spec, in_channels, num_classes)
    convs = ["conv1"] + [conv.name for block in iter_blocks(spec) for conv in block_convs(block, spec, spec.preact)]
    return sorted(f"{conv}.bias" for conv in convs if f"{conv}.bias" in names)
