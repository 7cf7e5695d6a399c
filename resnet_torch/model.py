"""ResNet in PyTorch: the chapter's blocks, the network built from :mod:`common.spec`, weights I/O.

Module and attribute names are torchvision's (``conv1``, ``bn1``, ``layer2.0.downsample.0``,
``fc``), so ``state_dict()`` keys already are the canonical names of :mod:`common.spec` and
export is the state dict without ``num_batches_tracked``. PyTorch's own layers already have the
reference semantics: symmetric integer padding, BatchNorm eps 1e-5 and momentum 0.1, running
variance updated with the unbiased batch variance while normalising with the biased one.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.spec import (BN_EPSILON, BN_MOMENTUM, check_input_shape, get_spec, iter_blocks, parameter_shapes,
                         tap_selection)
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

#: The layout the network takes: PyTorch's own (channels_last memory was slower here, see train.Trainer).
DATA_FORMAT = "NCHW"


class _UnfoldWeightGradConv2d(torch.autograd.Function):
    """A convolution whose weight gradient is a matrix product over unfolded (im2col) input.

    The forward pass and the input gradient are oneDNN's; only the weight gradient differs,
    which oneDNN computes 2-3x slower than its forward pass for one input channel (the 7 x 7
    stem) and for 3 x 3 feature maps (layer4 at 96 x 96), measured on the AVX2 CPU. Same sums,
    other order: the result agrees to float32 rounding.
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
    flattened output map, its weight the kernel times :func:`common.spec.tap_selection`.

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
    out_h, out_w = ((n + 2 * p - k) // s + 1 for n, k, p, s in zip((h, w), (kh, kw), padding, stride))
    out_pixels = out_h * out_w
    dense = (weight.reshape(out_channels * in_channels, kh * kw) @ selection)  # (O*C, out_pixels*H*W)
    dense = dense.reshape(out_channels, in_channels, out_pixels, h * w).transpose(1, 2)
    dense = dense.reshape(out_channels * out_pixels, in_channels * h * w)
    bias = None if bias is None else bias.repeat_interleave(out_pixels)
    return F.linear(x.flatten(1), dense, bias).view(x.shape[0], out_channels, out_h, out_w)


class _Conv2d(nn.Conv2d):
    """nn.Conv2d with faster CPU paths for the shapes where oneDNN is slow; the same function.

    * Input and output maps of at most 16 pixel pairs (2 x 2 -> 2 x 2, 2 x 2 -> 1 x 1, 1 x 1
      -> 1 x 1: layer3/layer4 at 28 x 28): one dense layer with the kernel unfolded
      (:func:`_conv_as_dense`), which skips the padding taps oneDNN multiplies; 3x faster
      than oneDNN's training step for layer3's 2 x 2 maps.
    * One input channel (the stem) or an output of at most 3 x 3 (layer4 at 96 x 96): the weight
      gradient by :class:`_UnfoldWeightGradConv2d`.
    """

    def forward(self, x):
        if x.dim() != 4 or self.dilation != (1, 1) or self.groups != 1 or isinstance(self.padding, str):
            return super().forward(x)
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        h, w = x.shape[-2:]
        out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if h * w * out_h * out_w <= 16 and (kh, kw) != (1, 1):
            return _conv_as_dense(x, self.weight, self.bias, self.stride, self.padding)
        if (x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and self.bias is not None and (self.in_channels == 1 or out_h * out_w <= 9)):
            return _UnfoldWeightGradConv2d.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def batch_norm(num_channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the project's constants (PyTorch's defaults, written down explicitly)."""
    return nn.BatchNorm2d(num_channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class Residual(nn.Module):
    """The Residual block of ResNet models (the chapter's signature, torchvision's names).

    The chapter's ``conv3`` (the 1x1 strided convolution on the shortcut, with bias and no
    BatchNorm) is stored as ``downsample[0]``, torchvision's name for it.
    """

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        # Registration order is the canonical parameter order of common.spec.
        self.conv1 = _Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.bn1 = batch_norm(num_channels)
        self.conv2 = _Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.bn2 = batch_norm(num_channels)
        if use_1x1conv:
            self.downsample = nn.Sequential(_Conv2d(input_channels, num_channels, kernel_size=1, stride=strides))
        else:
            self.downsample = None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))

        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    """The chapter's stage: a list of ``num_residuals`` blocks, the first one halving H and W."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


#: Block type of :class:`common.spec.ResNetSpec` -> how to build one block from its BlockConfig.
BLOCK_BUILDERS = {
    "basic": lambda block: Residual(block.in_channels, block.out_channels, block.use_1x1conv, block.stride),
}


class ResNet(nn.Module):
    """ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..4, fc)."""

    def __init__(self, arch="resnet18", num_classes=10, in_channels=1):
        super().__init__()
        spec = get_spec(arch)
        parameter_shapes(spec, in_channels, num_classes)  # validates in_channels and num_classes
        self.arch, self.num_classes, self.in_channels = spec.name, num_classes, in_channels
        self.conv1 = _Conv2d(in_channels, spec.stem_channels, kernel_size=spec.stem_kernel,
                             stride=spec.stem_stride, padding=spec.stem_padding, bias=spec.conv_bias)
        self.bn1 = batch_norm(spec.stem_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=spec.pool_kernel, stride=spec.pool_stride, padding=spec.pool_padding)
        stages: Dict[int, List[nn.Module]] = {}
        for block in iter_blocks(spec):
            stages.setdefault(block.stage, []).append(BLOCK_BUILDERS[spec.block](block))
        for number, blocks in stages.items():
            setattr(self, f"layer{number}", nn.Sequential(*blocks))
        self.num_stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(spec.feature_channels, num_classes)

    def _stem(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        return self.maxpool(x)

    def _pool(self, x):
        return torch.flatten(self.avgpool(x), 1)

    def stages(self):
        """(name, function) for each stage of :func:`common.spec.stage_output_shapes`, in order."""
        layers = [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, self.num_stages + 1)]
        return [("stem", self._stem)] + layers + [("pool", self._pool), ("fc", self.fc)]

    def forward(self, x):
        check_input_shape(x.shape, self.in_channels, DATA_FORMAT)
        for _, stage in self.stages():
            x = stage(x)
        return x


def resnet(arch="resnet18", num_classes=10, in_channels=1) -> ResNet:
    """The network ``arch`` of :data:`common.spec.RESNET_SPECS` with PyTorch's default init."""
    return ResNet(arch, num_classes, in_channels)


def resnet18(num_classes=10, in_channels=1) -> ResNet:
    return resnet("resnet18", num_classes, in_channels)


def count_parameters(net) -> int:
    """Number of trainable scalars (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _architecture(net) -> Tuple[str, int, int]:
    """(arch, in_channels, num_classes) of a ResNet, or of the chapter's nn.Sequential ResNet-18."""
    if isinstance(net, ResNet):
        return net.arch, net.in_channels, net.num_classes
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise ValueError(f"{type(net).__name__} is not a ResNet: it has no convolution or no dense layer")
    return "resnet18", convs[0].in_channels, linears[-1].out_features


def _canonical_tensors(net) -> Dict[str, torch.Tensor]:
    """Canonical name -> the net's parameter or buffer tensor (the one mapping, written once).

    For :class:`ResNet` the state-dict keys are the canonical names. The chapter's own
    network (``nn.Sequential(b1, ..., b5, pool, flatten, linear)`` of our ``Residual``) has
    keys such as ``0.0.weight`` or ``2.0.downsample.0.bias`` holding the same tensors in the
    same order, so its entries are matched by position, checking each kind and shape.
    """
    state = {k: v for k, v in net.state_dict(keep_vars=True).items() if not k.endswith("num_batches_tracked")}
    shapes = parameter_shapes(*_architecture(net))
    if list(state) == list(shapes):
        return state
    if len(state) != len(shapes):
        raise ValueError(f"{type(net).__name__} has {len(state)} weight arrays, ResNet needs {len(shapes)}; "
                         "build it with resnet18() or the chapter's Residual/resnet_block")
    mapping = {}
    for (key, tensor), (name, shape) in zip(state.items(), shapes.items()):
        if key.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1] or tuple(tensor.shape) != shape:
            raise ValueError(f"network entry '{key}' {tuple(tensor.shape)} does not line up with canonical "
                             f"'{name}' {shape}; build it with resnet18() or the chapter's Residual/resnet_block")
        mapping[name] = tensor
    return mapping


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 NumPy copy (OIHW conv, (out, in) dense), in spec order."""
    # .contiguous(): a net a user converted to channels_last still exports OIHW memory order.
    return {name: tensor.detach().cpu().contiguous().numpy().astype(np.float32, copy=True)
            for name, tensor in _canonical_tensors(net).items()}


def import_weights(net, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes."""
    arch, in_channels, num_classes = _architecture(net)
    check_weights(weights, arch, in_channels=in_channels, num_classes=num_classes)
    with torch.no_grad():
        for name, tensor in _canonical_tensors(net).items():
            # copy_ keeps the destination's device and memory format.
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32)))


def _device(net) -> torch.device:
    return next(net.parameters()).device


def _input(net, images) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(_device(net))


def forward(net, images, training=False) -> np.ndarray:
    """Logits (NumPy) for an NCHW NumPy batch.

    ``training=True`` normalises with batch statistics and updates the running ones, as a
    training step's forward pass does, without any gradient step; the net's mode is restored.
    """
    was_training = net.training
    net.train(training)
    try:
        with torch.no_grad():
            return net(_input(net, images)).cpu().numpy()
    finally:
        net.train(was_training)


def trace_shapes(net, images) -> List[Tuple[str, tuple]]:
    """(stage name, NCHW output shape) through stem, layer1..4, pool and fc, in eval mode."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            x = _input(net, images)
            check_input_shape(x.shape, net.in_channels, DATA_FORMAT)
            shapes = []
            for name, stage in net.stages():
                x = stage(x)
                shapes.append((name, tuple(x.shape)))
            return shapes
    finally:
        net.train(was_training)
