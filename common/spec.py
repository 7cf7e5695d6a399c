"""The ResNet architecture as data.

Every backend builds its network from these tables, so the four frameworks cannot drift
apart: the stem, the stages, the block type and the BatchNorm constants are written down once,
here.

A network is an architecture (a row of :data:`RESNET_SPECS`: ResNet-18 to 152 of the ResNet
paper's Table 1 and ResNeXt-50 32x4d, or the book's ``arch`` tuple of ``(num_residuals,
num_channels)`` pairs) in one of :data:`STYLES`:

* ``"d2l"``: the chapter's choices (convolutions with biases, a strided 1 x 1 convolution
  without BatchNorm on the shortcut where the shape changes; a bottleneck's stride on its
  3 x 3 convolution). ResNet-18 in this style is the chapter's network.
* ``"torchvision"``: torchvision's ResNet exactly (bias-free convolutions, 1 x 1 convolution
  plus BatchNorm on the shortcut): the canonical weights are its ``state_dict()``.
* ``"preact"``: pre-activation blocks (BatchNorm, ReLU, convolution; He et al. 2016), the
  projection shortcut fed by the block's pre-activated input, and a final BatchNorm (``norm``)
  and ReLU before pooling.

Every network also has one of :data:`STEMS`, its first layers before the stages:

* ``"imagenet"`` (the default): the chapter's (and the ResNet paper's) 7 x 7 convolution with
  stride 2, BatchNorm, ReLU and a 3 x 3 max pool with stride 2: a quarter of the input's size
  per side at stage 1.
* ``"small"``: the CIFAR-style stem of the small-image recipes (3 x 3 convolution, stride 1,
  BatchNorm, ReLU and no max pool): stage 1 runs at the input's full size. Its convolution
  ``conv1`` is 3 x 3; every other array is the same.

Adding a depth means adding a row to :data:`RESNET_SPECS`; a new block type also needs a
builder in each backend, keyed by :attr:`ResNetSpec.block_kind`.

This module holds the table and its iteration (blocks, convolutions, map sizes) and the checks of
a network's inputs against it; the names of a network's arrays are :mod:`common.naming`'s, its
FLOPs :mod:`common.flops`', the thresholds of the backends' fast paths :mod:`common.fastpaths`'.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Tuple

import numpy as np

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "STYLES",
    "STEMS",
    "STEM_FIELDS",
    "StageSpec",
    "ResNetSpec",
    "BlockConfig",
    "ConvConfig",
    "BLOCK_EXPANSION",
    "RESNET_SPECS",
    "get_spec",
    "arch_name",
    "iter_blocks",
    "block_convs",
    "iter_convs",
    "conv_output_size",
    "stage_output_shapes",
    "check_positive",
    "check_input_shape",
]

#: BatchNorm epsilon in every backend (PyTorch's and Gluon's default; Keras' is 1e-3).
BN_EPSILON = 1e-5
#: BatchNorm momentum in PyTorch's convention: ``running = (1 - m) * running + m * batch``.
#: Keras and Gluon count the other way round and get ``1 - BN_MOMENTUM`` (0.9).
BN_MOMENTUM = 0.1


#: The ways every architecture can be built (see the module docstring).
STYLES = ("d2l", "torchvision", "preact")

#: The stems every architecture and style can have (see the module docstring).
STEMS = ("imagenet", "small")

#: Stem -> its fields of :class:`ResNetSpec`. The small stem has no max pool: its pool fields are
#: the identity's (a 1 x 1 window, stride 1), so sizes computed from them are right, and
#: :attr:`ResNetSpec.max_pool` says no pool layer is built or run.
STEM_FIELDS = {
    "imagenet": dict(stem_kernel=7, stem_stride=2, stem_padding=3, pool_kernel=3, pool_stride=2, pool_padding=1),
    "small": dict(stem_kernel=3, stem_stride=1, stem_padding=1, pool_kernel=1, pool_stride=1, pool_padding=0),
}


@dataclass(frozen=True)
class StageSpec:
    """One stage (torchvision's ``layerN``): ``blocks`` residual blocks of ``channels`` (torchvision's
    ``planes``: a bottleneck block's output has ``channels * 4``)."""

    channels: int
    blocks: int
    stride: int


@dataclass(frozen=True)
class ResNetSpec:
    """A whole network in one style with one stem. The defaults are the D2L chapter's ResNet-18.

    :func:`get_spec` sets a stem's fields from :data:`STEM_FIELDS`; ``stem`` names them. (A spec made
    here takes the imagenet stem's defaults; ``get_spec(spec, stem="small")`` gives it the small one:
    ``ResNetSpec(..., stem="small")`` alone would change no other field.)
    """

    name: str
    block: str  # "basic" (two 3x3 convolutions) or "bottleneck" (1x1, 3x3, 1x1)
    stages: Tuple[StageSpec, ...]
    style: str = "d2l"
    #: ResNeXt: the bottleneck's 3x3 convolution in ``groups`` groups of ``width_per_group``
    #: channels per 64 of the stage's ``channels`` (torchvision's ``groups``, ``width_per_group``).
    groups: int = 1
    width_per_group: int = 64
    #: One of :data:`STEMS`: "imagenet" (7 x 7 convolution, stride 2, 3 x 3 max pool) or "small"
    #: (3 x 3 convolution, stride 1, no max pool).
    stem: str = "imagenet"
    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_padding: int = 3
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_padding: int = 1

    def __post_init__(self):
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; known: {', '.join(STEMS)}")

    @property
    def max_pool(self) -> bool:
        """Whether the stem ends in a max pool (the imagenet stem's; the small stem has none)."""
        return self.stem != "small"

    @property
    def expansion(self) -> int:
        return BLOCK_EXPANSION[self.block]

    @property
    def feature_channels(self) -> int:
        return self.stages[-1].channels * self.expansion

    @property
    def conv_bias(self) -> bool:
        """The chapter's convolutions carry biases (torchvision's do not)."""
        return self.style != "torchvision"

    @property
    def norm_shortcut(self) -> bool:
        """A BatchNorm after the shortcut's 1x1 convolution (torchvision's ``downsample.1``)."""
        return self.style == "torchvision"

    @property
    def preact(self) -> bool:
        return self.style == "preact"

    @property
    def block_kind(self) -> str:
        """What a backend builds each block as: "basic", "bottleneck", "preact_basic", "preact_bottleneck"."""
        return f"preact_{self.block}" if self.preact else self.block

    @property
    def label(self) -> str:
        """How messages name the network: ``resnet18``, ``resnet50 (style torchvision)``,
        ``resnet18 (stem small)``, ``resnet50 (style torchvision, stem small)``."""
        options = [f"style {self.style}"] if self.style != "d2l" else []
        if self.stem != "imagenet":
            options.append(f"stem {self.stem}")
        return f"{self.name} ({', '.join(options)})" if options else self.name


#: Output channels of a block relative to its ``channels`` (torchvision's ``expansion``).
BLOCK_EXPANSION: Dict[str, int] = {"basic": 1, "bottleneck": 4}


def _table1(name, block, depths, **kwargs):
    """A row of the ResNet paper's Table 1: stage depths, widths 64-512, strides 1, 2, 2, 2."""
    stages = tuple(StageSpec(64 * 2 ** i, depth, 1 if i == 0 else 2) for i, depth in enumerate(depths))
    return ResNetSpec(name=name, block=block, stages=stages, **kwargs)


RESNET_SPECS: Dict[str, ResNetSpec] = {spec.name: spec for spec in (
    _table1("resnet18", "basic", (2, 2, 2, 2)),
    _table1("resnet34", "basic", (3, 4, 6, 3)),
    _table1("resnet50", "bottleneck", (3, 4, 6, 3)),
    _table1("resnet101", "bottleneck", (3, 4, 23, 3)),
    _table1("resnet152", "bottleneck", (3, 8, 36, 3)),
    _table1("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4),
)}


def _arch_tuple(arch):
    """The book's ``arch``, ``((num_residuals, num_channels), ...)``, checked; a tuple of int pairs."""
    pairs = tuple(tuple(pair) if isinstance(pair, (tuple, list)) else pair for pair in arch)
    if not pairs or not all(isinstance(pair, tuple) and len(pair) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair) for pair in pairs):
        raise ValueError(f"an arch tuple is ((num_residuals, num_channels), ...) of positive integers, got {arch!r}")
    return pairs


def _custom_spec(arch, style) -> ResNetSpec:
    """The book's ``ResNet(arch=...)``: basic blocks, the first stage at stride 1, the others 2."""
    pairs = _arch_tuple(arch)
    stages = tuple(StageSpec(channels, blocks, 1 if i == 0 else 2) for i, (blocks, channels) in enumerate(pairs))
    for spec in RESNET_SPECS.values():  # the book's ResNet-18 tuple is ResNet-18
        if spec.block == "basic" and spec.stages == stages and spec.groups == 1:
            return replace(spec, style=style)
    return ResNetSpec(name=str(pairs), block="basic", stages=stages, style=style)


def _with_stem(spec: ResNetSpec, stem) -> ResNetSpec:
    """``spec`` with ``stem`` (None: its own) and that stem's fields."""
    if stem is None or stem == spec.stem:
        return spec
    return replace(spec, stem=stem, **STEM_FIELDS[stem])


def get_spec(arch="resnet18", style=None, stem=None) -> ResNetSpec:
    """The spec of ``arch`` in ``style`` with ``stem`` (None: ``"d2l"`` and ``"imagenet"``, or the
    style and stem of a spec passed in).

    ``arch`` is a name of :data:`RESNET_SPECS`, a spec, or the book's tuple of
    ``(num_residuals, num_channels)`` pairs (also as its text, ``"((2, 64), (2, 128))"``, as the
    command line and checkpoints write it); a tuple naming a known network is that network.
    """
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    if stem is not None and stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    return _with_stem(_styled_spec(arch, style), stem)


def _styled_spec(arch, style) -> ResNetSpec:
    """:func:`get_spec` but for the stem: ``arch`` in ``style`` (checked already)."""
    if isinstance(arch, ResNetSpec):
        return arch if style is None or style == arch.style else replace(arch, style=style)
    if isinstance(arch, str) and arch.strip()[:1] in ("(", "["):
        try:
            arch = ast.literal_eval(arch.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"arch {arch!r} is neither a known name nor a tuple like ((2, 64), (2, 128))") from None
    if isinstance(arch, (tuple, list)):
        return _custom_spec(arch, style or "d2l")
    try:
        spec = RESNET_SPECS[arch]
    except (KeyError, TypeError):
        known = ", ".join(RESNET_SPECS)
        raise ValueError(f"unknown architecture {arch!r}; known: {known}, "
                         "or a tuple like ((2, 64), (2, 128))") from None
    return spec if style is None or style == spec.style else replace(spec, style=style)


def arch_name(arch) -> str:
    """The name of ``arch`` as :func:`get_spec` reads it back (a known name, or the tuple's text)."""
    return get_spec(arch).name


@dataclass(frozen=True)
class BlockConfig:
    """One residual block, fully resolved: what a backend needs to build it."""

    name: str  # canonical prefix, e.g. "layer2.0"
    stage: int  # 1-based, as in torchvision's layerN
    index: int  # position inside the stage
    in_channels: int
    channels: int  # the block's inner width (== out_channels for basic blocks)
    out_channels: int
    stride: int
    #: A 1x1 strided convolution on the shortcut (the chapter's ``use_1x1conv=True``).
    use_1x1conv: bool
    #: Groups of the block's 3x3 convolution (a bottleneck's conv2; ResNeXt's 32).
    groups: int = 1


def iter_blocks(arch="resnet18") -> Iterator[BlockConfig]:
    """Yield every residual block in order, with its channels, stride and shortcut.

    The first block of a stage takes the stage's stride; a block whose stride is not 1 or
    whose channel count changes gets the 1x1 convolution on its shortcut (the chapter's
    ``use_1x1conv=True``), so the first stage of ResNet-18 has none and ResNet-50's has one.
    A bottleneck's inner width is torchvision's ``channels * width_per_group / 64 * groups``.
    """
    spec = get_spec(arch)
    in_channels = spec.stem_channels
    for stage_number, stage in enumerate(spec.stages, start=1):
        out_channels = stage.channels * spec.expansion
        width = stage.channels if spec.block == "basic" else stage.channels * spec.width_per_group // 64 * spec.groups
        for index in range(stage.blocks):
            stride = stage.stride if index == 0 else 1
            yield BlockConfig(
                name=f"layer{stage_number}.{index}",
                stage=stage_number,
                index=index,
                in_channels=in_channels,
                channels=width,
                out_channels=out_channels,
                stride=stride,
                use_1x1conv=stride != 1 or in_channels != out_channels,
                groups=spec.groups if spec.block == "bottleneck" else 1,
            )
            in_channels = out_channels


@dataclass(frozen=True)
class ConvConfig:
    """One convolution of a block: canonical name, channels, kernel, stride, padding, groups, and
    whether it reads the block's input map (else the map after the block's stride)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int
    on_block_input: bool


def block_convs(block: BlockConfig, arch="resnet18", shortcut: bool = True) -> List[ConvConfig]:
    """The convolutions of ``block`` in the order they run, the shortcut's last (left out with
    ``shortcut=False``: the residual branch alone, its convolutions numbered 1, 2, ...)."""
    spec = get_spec(arch)
    b = block
    if spec.block == "basic":
        convs = [ConvConfig(f"{b.name}.conv1", b.in_channels, b.channels, 3, b.stride, 1, 1, True),
                 ConvConfig(f"{b.name}.conv2", b.channels, b.out_channels, 3, 1, 1, 1, False)]
    else:
        convs = [ConvConfig(f"{b.name}.conv1", b.in_channels, b.channels, 1, 1, 0, 1, True),
                 ConvConfig(f"{b.name}.conv2", b.channels, b.channels, 3, b.stride, 1, b.groups, True),
                 ConvConfig(f"{b.name}.conv3", b.channels, b.out_channels, 1, 1, 0, 1, False)]
    if shortcut and b.use_1x1conv:
        convs.append(ConvConfig(f"{b.name}.downsample.0", b.in_channels, b.out_channels, 1, b.stride, 0, 1, True))
    return convs


def iter_convs(arch="resnet18", in_channels=1, height=224, width=224) -> Iterator[Tuple[ConvConfig, Tuple[int, int]]]:
    """Every convolution of the network in order, with the (height, width) of its input map."""
    spec = get_spec(arch)
    yield (ConvConfig("conv1", in_channels, spec.stem_channels, spec.stem_kernel, spec.stem_stride,
                      spec.stem_padding, 1, True), (height, width))
    h, w = _stem_output_size(spec, height, width)
    for block in iter_blocks(spec):
        out_h, out_w = conv_output_size(h, 3, block.stride, 1), conv_output_size(w, 3, block.stride, 1)
        for conv in block_convs(block, spec):
            if conv.on_block_input:
                yield conv, (h, w)
            else:
                yield conv, (out_h, out_w)
        h, w = out_h, out_w


def _stem_output_size(spec: ResNetSpec, height, width) -> Tuple[int, int]:
    """(height, width) of the stem's output: after its convolution and, where it has one, its max pool."""
    h = conv_output_size(height, spec.stem_kernel, spec.stem_stride, spec.stem_padding)
    w = conv_output_size(width, spec.stem_kernel, spec.stem_stride, spec.stem_padding)
    if spec.max_pool:
        h = conv_output_size(h, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
        w = conv_output_size(w, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
    return h, w


def conv_output_size(size, kernel, stride, padding):
    """Output size of a convolution or pooling window: ``(size + 2 * padding - kernel) // stride + 1``.

    Each argument is an int or a sequence of ints (one per spatial axis); the result is an
    int, or a tuple when any argument is a sequence.
    """
    arguments = (size, kernel, stride, padding)
    if all(np.ndim(value) == 0 for value in arguments):
        return (int(size) + 2 * int(padding) - int(kernel)) // int(stride) + 1
    length = max(len(value) for value in arguments if np.ndim(value) != 0)
    n, k, s, p = ([int(v) for v in value] if np.ndim(value) != 0 else [int(value)] * length for value in arguments)
    return tuple((n[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(length))


def stage_output_shapes(arch="resnet18", in_channels=1, height=224, width=224, num_classes=10):
    """Per-example output shape (channels first) after each stage, as the chapter prints them.

    Returns ``[("stem", (64, 56, 56)), ("layer1", ...), ..., ("pool", (512,)), ("fc", (10,))]``
    for a 224 x 224 input (``("stem", (64, 224, 224))`` with the small stem).
    """
    spec = get_spec(arch)
    h, w = _stem_output_size(spec, height, width)
    if h < 1 or w < 1:
        raise ValueError(f"input {height}x{width} is too small for {spec.name}")
    shapes = [("stem", (spec.stem_channels, h, w))]
    channels = spec.stem_channels
    for stage_number, stage in enumerate(spec.stages, start=1):
        h = conv_output_size(h, 3, stage.stride, 1)
        w = conv_output_size(w, 3, stage.stride, 1)
        channels = stage.channels * spec.expansion
        shapes.append((f"layer{stage_number}", (channels, h, w)))
    shapes.append(("pool", (channels,)))
    shapes.append(("fc", (num_classes,)))
    return shapes


def check_positive(**values):
    """A one-line ValueError unless every value is a positive integer (not a bool)."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def check_input_shape(shape, in_channels: int, data_format: str = "NCHW") -> None:
    """Raise ValueError (saying what was expected) unless ``shape`` is an image batch.

    Backends call this on the static shape at the network's entrance, so a wrong rank,
    channel count or layout fails with one clear line instead of deep inside a layer.
    """
    shape = tuple(None if d is None else int(d) for d in shape)
    wanted = f"(N, {in_channels}, H, W)" if data_format == "NCHW" else f"(N, H, W, {in_channels})"
    if len(shape) != 4:
        raise ValueError(
            f"expected a rank-4 image batch of shape {wanted} ({data_format}), got rank {len(shape)} shape {shape}"
        )
    channels = shape[1] if data_format == "NCHW" else shape[3]
    if channels is not None and channels != in_channels:
        other = "NHWC" if data_format == "NCHW" else "NCHW"
        raise ValueError(
            f"expected {in_channels} input channel(s), shape {wanted} ({data_format}), got shape {shape} "
            f"with {channels} channel(s); is the batch in {other} layout, or built for another in_channels?"
        )
