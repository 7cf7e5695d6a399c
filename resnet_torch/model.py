"""ResNet in PyTorch: the chapter's blocks and network, the exercises' (bottleneck, ResNeXt and
pre-activation blocks; ResNet-18 to 152 and ResNeXt-50 in every style), built from :mod:`common.spec`,
and weights I/O.

Module names are torchvision's (``conv1``, ``bn1``, ``layer2.0.downsample.0``, ``fc``), so the
``state_dict()`` keys are the canonical names of :mod:`common.spec`.
Fast paths: ``layers=kernels.FAST`` (blocks: ``conv=``), a constructor argument, as :mod:`common.fastpaths` says.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.fastpaths import plain_layers
from common.naming import canonical_names, is_residual_block, parameter_shapes
from common.spec import ResNetSpec, check_input_shape, get_spec, iter_blocks
from common.weights import check_weights

from . import kernels
from .kernels import batch_norm

__all__ = [
    "DATA_FORMAT",
    "Residual",
    "resnet_block",
    "Bottleneck",
    "ResNeXtBlock",
    "PreActResidual",
    "PreActBottleneck",
    "BLOCK_BUILDERS",
    "ResNet",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "count_parameters",
    "architecture",
    "canonical_variables",
    "export_weights",
    "import_weights",
    "forward",
    "trace_shapes",
]

#: The layout the network takes: PyTorch's own.
DATA_FORMAT = "NCHW"


class Residual(nn.Module):
    """The Residual block of ResNet models."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *, bias=True,
                 norm_shortcut=False, conv=nn.Conv2d):
        super().__init__()
        # Registered in the canonical parameter order: conv1, bn1, conv2, bn2, downsample.
        self.conv1 = conv(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn1 = batch_norm(num_channels)
        self.conv2 = conv(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        self.bn2 = batch_norm(num_channels)
        if use_1x1conv:  # the chapter's conv3, under torchvision's name
            self.downsample = _projection(input_channels, num_channels, strides, bias=bias, norm=norm_shortcut,
                                          conv=conv)
        else:
            self.downsample = None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


# --- the chapter's exercises: deeper networks, other blocks, other styles ----------------------

def _projection(input_channels, num_channels, strides=1, *, bias=True, norm=False, conv=nn.Conv2d):
    """The shortcut's strided 1x1 convolution (``downsample.0``), with a BatchNorm after it
    (``downsample.1``) where ``norm`` is set (torchvision's style)."""
    layers = [conv(input_channels, num_channels, kernel_size=1, stride=strides, bias=bias)]
    if norm:
        layers.append(batch_norm(num_channels))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """The bottleneck block of ResNet-50 and deeper: 1x1 convolution down to ``bot_channels``
    (default ``num_channels // 4``), 3x3 convolution (with the stride, in ``groups`` groups), 1x1
    convolution up to ``num_channels``, each followed by BatchNorm; ReLU after the first two and
    after the addition of the shortcut."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *, bot_channels=None,
                 groups=1, bias=True, norm_shortcut=False, conv=nn.Conv2d):
        super().__init__()
        bot_channels = num_channels // 4 if bot_channels is None else bot_channels
        self.conv1 = conv(input_channels, bot_channels, kernel_size=1, bias=bias)
        self.bn1 = batch_norm(bot_channels)
        self.conv2 = conv(bot_channels, bot_channels, kernel_size=3, padding=1, stride=strides, groups=groups,
                          bias=bias)
        self.bn2 = batch_norm(bot_channels)
        self.conv3 = conv(bot_channels, num_channels, kernel_size=1, bias=bias)
        self.bn3 = batch_norm(num_channels)
        if use_1x1conv:
            self.downsample = _projection(input_channels, num_channels, strides, bias=bias, norm=norm_shortcut,
                                          conv=conv)
        else:
            self.downsample = None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


class ResNeXtBlock(Bottleneck):
    """The ResNeXt block, with the book's signature: ``bot_channels = int(round(num_channels *
    bot_mul))`` and a 3x3 convolution in groups of ``groups`` channels each (``bot_channels //
    groups`` groups). A :class:`Bottleneck` otherwise; unlike the book's block (``conv4`` and
    ``bn4``), its shortcut follows the style: a BatchNorm after the 1x1 convolution only with
    ``norm_shortcut=True``."""

    def __init__(self, input_channels, num_channels, groups, bot_mul, use_1x1conv=False, strides=1, *, bias=True,
                 norm_shortcut=False, conv=nn.Conv2d):
        bot_channels = int(round(num_channels * bot_mul))
        super().__init__(input_channels, num_channels, use_1x1conv, strides, bot_channels=bot_channels,
                         groups=bot_channels // groups, bias=bias, norm_shortcut=norm_shortcut, conv=conv)


class PreActResidual(nn.Module):
    """The pre-activation residual block (He et al. 2016): BatchNorm, ReLU, convolution, twice; the
    shortcut is the input itself, or the 1x1 convolution of the pre-activated input. No ReLU after
    the addition."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *, bias=True, conv=nn.Conv2d):
        super().__init__()
        self.bn1 = batch_norm(input_channels)
        self.conv1 = conv(input_channels, num_channels, kernel_size=3, padding=1, stride=strides, bias=bias)
        self.bn2 = batch_norm(num_channels)
        self.conv2 = conv(num_channels, num_channels, kernel_size=3, padding=1, bias=bias)
        if use_1x1conv:
            self.downsample = _projection(input_channels, num_channels, strides, bias=bias, conv=conv)
        else:
            self.downsample = None

    def forward(self, X):
        A = F.relu(self.bn1(X))
        Y = self.conv1(A)
        Y = self.conv2(F.relu(self.bn2(Y)))
        if self.downsample is not None:
            X = self.downsample(A)
        return Y + X


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck block: BatchNorm, ReLU, convolution for each of the
    :class:`Bottleneck`'s three convolutions; shortcut as in :class:`PreActResidual`."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1, *, bot_channels=None, groups=1,
                 bias=True, conv=nn.Conv2d):
        super().__init__()
        bot_channels = num_channels // 4 if bot_channels is None else bot_channels
        self.bn1 = batch_norm(input_channels)
        self.conv1 = conv(input_channels, bot_channels, kernel_size=1, bias=bias)
        self.bn2 = batch_norm(bot_channels)
        self.conv2 = conv(bot_channels, bot_channels, kernel_size=3, padding=1, stride=strides, groups=groups,
                          bias=bias)
        self.bn3 = batch_norm(bot_channels)
        self.conv3 = conv(bot_channels, num_channels, kernel_size=1, bias=bias)
        if use_1x1conv:
            self.downsample = _projection(input_channels, num_channels, strides, bias=bias, conv=conv)
        else:
            self.downsample = None

    def forward(self, X):
        A = F.relu(self.bn1(X))
        Y = self.conv1(A)
        Y = self.conv2(F.relu(self.bn2(Y)))
        Y = self.conv3(F.relu(self.bn3(Y)))
        if self.downsample is not None:
            X = self.downsample(A)
        return Y + X


#: :attr:`common.spec.ResNetSpec.block_kind` -> one block from its :class:`common.spec.BlockConfig`,
#: the network's spec and its :class:`common.fastpaths.Layers`.
BLOCK_BUILDERS = {
    "basic": lambda block, spec, layers: Residual(
        block.in_channels, block.out_channels, block.use_1x1conv, block.stride,
        bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut, conv=layers.conv),
    "bottleneck": lambda block, spec, layers: Bottleneck(
        block.in_channels, block.out_channels, block.use_1x1conv, block.stride, bot_channels=block.channels,
        groups=block.groups, bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut, conv=layers.conv),
    "preact_basic": lambda block, spec, layers: PreActResidual(
        block.in_channels, block.out_channels, block.use_1x1conv, block.stride, bias=spec.conv_bias,
        conv=layers.conv),
    "preact_bottleneck": lambda block, spec, layers: PreActBottleneck(
        block.in_channels, block.out_channels, block.use_1x1conv, block.stride, bot_channels=block.channels,
        groups=block.groups, bias=spec.conv_bias, conv=layers.conv),
}


class ResNet(nn.Module):
    """ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..4, fc).

    ``arch`` is a name of :data:`common.spec.RESNET_SPECS`, a spec, or the book's tuple of
    ``(num_residuals, num_channels)`` pairs; ``style`` one of :data:`common.spec.STYLES`;
    ``layers`` the convolution and pools every layer is made with (:data:`resnet_torch.kernels.PLAIN`
    or ``FAST``). A pre-activation network has a final BatchNorm (``norm``) and ReLU before pooling.
    The stem is the spec's (``get_spec(arch, stem="small")``: 3x3 convolution, no ``maxpool``).
    """

    def __init__(self, arch="resnet18", num_classes=10, in_channels=1, style="d2l", layers=kernels.PLAIN):
        super().__init__()
        spec = get_spec(arch, style)
        parameter_shapes(spec, in_channels, num_classes)  # validates in_channels and num_classes
        self.spec, self.arch, self.style = spec, spec.name, spec.style
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = layers.conv(in_channels, spec.stem_channels, kernel_size=spec.stem_kernel,
                                 stride=spec.stem_stride, padding=spec.stem_padding, bias=spec.conv_bias)
        self.bn1 = batch_norm(spec.stem_channels)
        self.relu = nn.ReLU()
        if spec.max_pool:
            self.maxpool = layers.max_pool(kernel_size=spec.pool_kernel, stride=spec.pool_stride,
                                           padding=spec.pool_padding)
        else:  # the small stem (common.spec.STEMS): stage 1 at the input's size
            self.maxpool = None
        stages: Dict[int, List[nn.Module]] = {}
        for block in iter_blocks(spec):
            stages.setdefault(block.stage, []).append(BLOCK_BUILDERS[spec.block_kind](block, spec, layers))
        for number, blocks in stages.items():
            setattr(self, f"layer{number}", nn.Sequential(*blocks))
        self.num_stages = len(stages)
        self.norm = batch_norm(spec.feature_channels) if spec.preact else None
        self.avgpool = layers.global_pool((1, 1))
        self.fc = nn.Linear(spec.feature_channels, num_classes)

    def _stem(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

    def _pool(self, x):
        if self.norm is not None:  # pre-activation: the last block's output is not yet normalised
            x = self.relu(self.norm(x))
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


def resnet(arch="resnet18", num_classes=10, in_channels=1, style="d2l", plain=None) -> ResNet:
    """The network ``arch`` (see :class:`ResNet`) in ``style`` with PyTorch's default init, built from
    :data:`resnet_torch.kernels.FAST` unless :func:`common.fastpaths.plain_layers` (``plain``) says ``PLAIN``."""
    return ResNet(arch, num_classes, in_channels, style, layers=kernels.PLAIN if plain_layers(plain) else kernels.FAST)


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
    """Number of trainable scalars (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def architecture(net) -> Tuple[ResNetSpec, int, int]:
    """(spec, in_channels, num_classes) of a ResNet (its spec with its style), or of the chapter's
    nn.Sequential ResNet-18."""
    if isinstance(net, ResNet):
        return net.spec, net.in_channels, net.num_classes
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise ValueError(f"{type(net).__name__} is not a ResNet: it has no convolution or no dense layer")
    return get_spec("resnet18"), convs[0].in_channels, linears[-1].out_features


def _units(module) -> Iterator[Dict[str, torch.Tensor]]:
    """The net's layers with weights and its residual blocks (what has a conv1 and a conv2), in order,
    each as its state-dict entries; see :func:`common.naming.canonical_names`."""
    children = dict(module.named_children())
    if children and not is_residual_block(children):
        for child in children.values():
            yield from _units(child)
        return
    state = {k: v for k, v in module.state_dict(keep_vars=True).items() if not k.endswith("num_batches_tracked")}
    if state:
        yield state


def canonical_variables(net) -> Dict[str, torch.Tensor]:
    """Canonical name -> the net's parameter or buffer tensor, in spec order: a :class:`ResNet`, the
    chapter's ``nn.Sequential`` of this or the book's ``Residual``, by :func:`common.naming.canonical_names`."""
    return canonical_names(list(_units(net)), *architecture(net))


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 NumPy copy (OIHW conv, (out, in) dense), in spec order."""
    # .contiguous(): a net a user converted to channels_last still exports OIHW memory order.
    return {name: tensor.detach().cpu().contiguous().numpy().astype(np.float32, copy=True)
            for name, tensor in canonical_variables(net).items()}


def import_weights(net, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes."""
    spec, in_channels, num_classes = architecture(net)
    check_weights(weights, spec, in_channels=in_channels, num_classes=num_classes)
    with torch.no_grad():
        for name, tensor in canonical_variables(net).items():
            # copy_ keeps the destination's device and memory format.
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32)))


def _input(net, images) -> torch.Tensor:
    device = next(net.parameters()).device
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)


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
