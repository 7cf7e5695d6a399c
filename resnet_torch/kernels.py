"""What exists for speed or exact agreement, kept out of ``model.py``: the layers a network is built from.

PyTorch's own layers already compute the reference function (symmetric integer padding,
BatchNorm with the project's constants, NaN kept by ReLU), so this module holds only a faster
convolution for the shapes where oneDNN is slow on the CPU, :class:`FastConv2d`. :data:`PLAIN`
and :data:`FAST` are the two :class:`common.fastpaths.Layers` a ``ResNet`` is built from (how and
why: :mod:`common.fastpaths`); they differ only in the convolution, which computes the same
function as ``nn.Conv2d`` (the oracle tests run both) with the same parameters, so
``state_dict()`` and the weights are the same either way.

The memory layout a ``Trainer`` trains in, NCHW or ``channels_last`` (:func:`choose_memory_format`),
is chosen here too, the same way: measured once per machine and shape, the same function either way.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from common import autotune
from common.autotune import NATIVE
from common.fastpaths import (
    DENSE_CONV_MAX_PIXEL_PAIRS,
    MATMUL_CONV_MAX_IN_CHANNELS,
    MATMUL_CONV_MAX_OUTPUT_PIXELS,
    Layers,
    tap_selection,
)
from common.spec import BN_EPSILON, BN_MOMENTUM, conv_output_size

__all__ = ["batch_norm", "PLAIN", "FAST", "fast_layer_count", "FastConv2d", "MEMORY_FORMATS", "choose_memory_format",
           "to_memory_format"]

#: What an autotuned choice is measured for (with the machine): this PyTorch.
FRAMEWORK = f"PyTorch {torch.__version__}"


def batch_norm(num_channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the project's constants (PyTorch's defaults, written down)."""
    return nn.BatchNorm2d(num_channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class _UnfoldWeightGradConv2d(torch.autograd.Function):
    """A convolution whose weight gradient is a matrix product over unfolded (im2col) input.

    The forward pass and the input gradient are oneDNN's; only the weight gradient differs.
    Same sums, other order: the result agrees to float32 rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        out_channels = grad.shape[1]
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1, (True, False, False))[0]
        cols = F.unfold(x, weight.shape[-2:], padding=ctx.padding, stride=ctx.stride)  # (N, C*k*k, L)
        if x.shape[1] == 1:  # K = C*k*k is small: one product per example, summed
            grad_weight = torch.matmul(grad.flatten(2), cols.transpose(1, 2)).sum(0)
        else:  # one (O, N*L) x (N*L, C*k*k) product
            grad_out = grad.transpose(0, 1).reshape(out_channels, -1)
            grad_weight = grad_out @ cols.transpose(1, 2).reshape(-1, cols.shape[1])
        grad_bias = grad.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight.view_as(weight), grad_bias, None, None


#: (input size, kernel, stride, padding, device, dtype) -> tap-selection tensor.
_SELECTIONS: Dict[tuple, torch.Tensor] = {}


def _conv_as_dense(x, weight, bias, stride, padding):
    """A convolution on a tiny map as one dense layer from the flattened input map to the
    flattened output map, its weight the kernel times :func:`common.fastpaths.tap_selection`.

    Autograd takes the gradient to the kernel through that product, a matrix product too.
    Taps that only ever meet padding get a zero gradient, as the convolution's do.
    """
    (out_channels, in_channels, kh, kw), (h, w) = weight.shape, x.shape[-2:]
    key = ((h, w), (kh, kw), stride, padding, weight.device, weight.dtype)
    selection = _SELECTIONS.get(key)
    if selection is None:
        # A normal tensor even when first met in inference mode (evaluation before training).
        with torch.inference_mode(False):
            selection = torch.from_numpy(tap_selection(*key[:4])).to(weight.device, weight.dtype)
        _SELECTIONS[key] = selection
    out_h, out_w = conv_output_size((h, w), (kh, kw), stride, padding)
    out_pixels = out_h * out_w
    dense = (weight.reshape(out_channels * in_channels, kh * kw) @ selection)  # (O*C, out_pixels*H*W)
    dense = dense.reshape(out_channels, in_channels, out_pixels, h * w).transpose(1, 2)
    dense = dense.reshape(out_channels * out_pixels, in_channels * h * w)
    bias = None if bias is None else bias.repeat_interleave(out_pixels)
    return F.linear(x.flatten(1), dense, bias).view(x.shape[0], out_channels, out_h, out_w)


def _unfold_weight_grad_conv(x, weight, bias, stride, padding):
    return _UnfoldWeightGradConv2d.apply(x, weight, bias, stride, padding)


def _native_conv(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride, padding)


#: The ways :class:`FastConv2d` can compute a convolution, fast ones in order of preference.
_PATHS = {"dense": _conv_as_dense, "unfold_weight_grad": _unfold_weight_grad_conv, NATIVE: _native_conv}


def _timed_run(path, x, weight, bias, stride, padding, training):
    """A call of ``path`` on fresh tensors shaped as the site's, forward and (training) backward.

    The backward pass takes a dense upstream gradient in the output's layout, made once outside
    the timed call, as a training step's BatchNorm hands it on: ``y.sum().backward()``'s
    broadcast gradient has stride 0, which oneDNN's kernel gradient first copies out in full
    (37.7 MB for the stem at 96 x 96, batch 64), and which made the stem look faster on
    :class:`_UnfoldWeightGradConv2d` than on oneDNN's own kernel."""
    x = torch.rand_like(x)
    weight = weight.detach().clone().requires_grad_(training)
    bias = None if bias is None else bias.detach().clone().requires_grad_(training)
    upstream = None
    if training:
        with torch.inference_mode(False), torch.no_grad():
            upstream = torch.rand_like(_native_conv(x, weight, bias, stride, padding))

    def run():
        with torch.inference_mode(False), torch.set_grad_enabled(training):
            y = _PATHS[path](x, weight, bias, stride, padding)
            if training:
                y.backward(upstream)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return run


def _in_channels_last(tensor) -> bool:
    """Whether ``tensor``'s strides are channels_last's, by ``Tensor.suggest_memory_format``'s rule
    (what makes PyTorch convolve in channels_last): where a size of 1 leaves both layouts the same
    memory (one channel, 1 x 1 maps), the strides ``.to(memory_format=...)`` gave still tell."""
    sizes, strides = tensor.shape, tensor.stride()
    if strides[1] == 0:
        return False
    least = 0
    for dim in (1, 3, 2, 0):  # channels_last's order, innermost first
        if sizes[dim] == 0 or strides[dim] < least or (dim == 0 and least == strides[1]):
            return False
        least = strides[dim] * max(sizes[dim], 1)
    return True


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` with faster paths for the shapes where oneDNN can be slow; the same function.

    * Input times output map of at most :data:`common.fastpaths.DENSE_CONV_MAX_PIXEL_PAIRS` pixel
      pairs (layer3/layer4 at 28 x 28): one dense layer with the kernel unfolded
      (:func:`_conv_as_dense`), which skips the padding taps oneDNN multiplies.
    * Few input channels (the stem) or a small output map (layer4 at 96 x 96): the weight
      gradient by :class:`_UnfoldWeightGradConv2d`.

    Where one applies, :func:`common.autotune.choose` picks between it and oneDNN's own
    convolution by timing both once per machine, shape and PyTorch version. Grouped convolutions
    (ResNeXt's) take ``nn.Conv2d``'s own path; convolutions with and without a bias both fit.
    Constructed as ``nn.Conv2d`` is, with no state of its own: the same parameters under the same names.
    """

    def forward(self, x):
        if x.dim() != 4 or self.dilation != (1, 1) or self.groups != 1 or isinstance(self.padding, str):
            return super().forward(x)
        h, w = x.shape[-2:]
        out_h, out_w = conv_output_size((h, w), self.kernel_size, self.stride, self.padding)
        training = torch.is_grad_enabled() and self.weight.requires_grad
        paths = []
        if h * w * out_h * out_w <= DENSE_CONV_MAX_PIXEL_PAIRS and self.kernel_size != (1, 1):
            paths.append("dense")
        elif (x.device.type == "cpu" and training
              and (self.in_channels <= MATMUL_CONV_MAX_IN_CHANNELS or out_h * out_w <= MATMUL_CONV_MAX_OUTPUT_PIXELS)):
            paths.append("unfold_weight_grad")
        if not paths:
            return super().forward(x)
        paths.append(NATIVE)
        # A network in channels_last memory convolves in it: a site of its own.
        layout = " channels_last" if _in_channels_last(x) or _in_channels_last(self.weight) else ""
        site = (f"conv {self.in_channels}->{self.out_channels} k{self.kernel_size[0]} s{self.stride[0]} "
                f"p{self.padding[0]}{'' if self.bias is not None else ' no bias'} on {tuple(x.shape)}{layout} "
                f"{x.device.type} {'train' if training else 'eval'}")
        args = (self.weight, self.bias, self.stride, self.padding)
        path = autotune.choose(FRAMEWORK, site, paths, lambda path: _timed_run(path, x, *args, training))
        return _PATHS[path](x, *args)


#: The framework's own layers (``plain=True``, ``RESNET_PLAIN_LAYERS=1``, the chapter's blocks by default).
PLAIN = Layers("plain", conv=nn.Conv2d, max_pool=nn.MaxPool2d, global_pool=nn.AdaptiveAvgPool2d)
#: The same with :class:`FastConv2d`; PyTorch's pools are fast already, so they stay.
FAST = Layers("fast", conv=FastConv2d, max_pool=nn.MaxPool2d, global_pool=nn.AdaptiveAvgPool2d)


def fast_layer_count(net: nn.Module) -> int:
    """How many layers of ``net`` run a fast path of this module (0 for a network built from :data:`PLAIN`)."""
    return sum(isinstance(module, FastConv2d) for module in net.modules())


# --- memory layout -------------------------------------------------------------------------

#: The memory layouts a network and its batches can take, by their names in the autotuning cache:
#: ``channels_last`` (NHWC order in memory, oneDNN's own: no reorder around each convolution),
#: then :data:`common.autotune.NATIVE`, PyTorch's default contiguous NCHW order. Either way a
#: tensor keeps its NCHW shape and indexing: the network computes the same function.
MEMORY_FORMATS = {"channels_last": torch.channels_last, NATIVE: torch.contiguous_format}


def _timed_step(net, memory_format, shape, autocast):
    """A training step's forward and backward pass (no update) of a copy of ``net`` in
    ``memory_format``, on random images of ``shape`` in it."""
    replica = copy.deepcopy(net).to(memory_format=memory_format).train()
    parameter = next(replica.parameters())
    x = torch.rand(shape, device=parameter.device).contiguous(memory_format=memory_format)

    def run():
        with torch.inference_mode(False), torch.enable_grad():
            with autocast:
                logits = replica(x)
            logits.float().logsumexp(1).mean().backward()  # a loss's cost, without labels
        replica.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return run


def choose_memory_format(net, label: str, shape, precision: str, autocast) -> torch.memory_format:
    """The memory layout (one of :data:`MEMORY_FORMATS`' values) to train ``net`` in on NCHW batches
    of ``shape``, chosen by :func:`common.autotune.choose` like a fast path: timed once per machine,
    network (``label``), batch shape, device and ``precision``, on a copy of ``net`` stepping in
    ``autocast`` (the step's ``torch.autocast``); ``RESNET_FAST_PATHS=fast`` takes ``channels_last``,
    ``native`` NCHW."""
    device = next(net.parameters()).device
    site = f"memory format of {label} on {tuple(shape)} {device.type} train {precision}"
    choice = autotune.choose(FRAMEWORK, site, list(MEMORY_FORMATS),
                             lambda path: _timed_step(net, MEMORY_FORMATS[path], tuple(shape), autocast))
    return MEMORY_FORMATS[choice]


def to_memory_format(net: nn.Module, optimizer, memory_format: torch.memory_format) -> None:
    """Lay out ``net``'s 4-d parameters and buffers, and the optimizer's state for them (momentum
    buffers), in ``memory_format``, in place: the optimizer keeps the same parameter objects."""
    net.to(memory_format=memory_format)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                state[key] = value.contiguous(memory_format=memory_format)
