"""The ResNet architecture as data.

Every backend builds its network from these tables, so the three frameworks cannot drift
apart: the stem, the stages, the block type, the BatchNorm constants and the canonical
parameter names (torchvision's ``state_dict`` names, conv weights OIHW, dense weights
``(out, in)``) are written down once, here.

Adding a depth or a block type means adding a row to :data:`RESNET_SPECS` (and, for a new
block type, a builder in each backend keyed by :attr:`ResNetSpec.block`); the backends'
loops over :func:`iter_blocks` do not change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Sequence, Tuple, TypeVar

import numpy as np

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "StageSpec",
    "ResNetSpec",
    "BlockConfig",
    "RESNET_SPECS",
    "get_spec",
    "iter_blocks",
    "parameter_shapes",
    "CANONICAL_PARTS",
    "CHAPTER_BLOCK_PARTS",
    "is_residual_block",
    "canonical_names",
    "trainable_parameter_names",
    "is_buffer",
    "count_parameters",
    "stage_output_shapes",
    "training_flops_per_example",
    "forward_flops_per_example",
    "check_input_shape",
    "conv_output_size",
    "tap_selection",
    "DENSE_CONV_MAX_PIXEL_PAIRS",
    "MATMUL_CONV_MAX_OUTPUT_PIXELS",
    "MATMUL_CONV_MAX_IN_CHANNELS",
]

#: BatchNorm epsilon in every backend (PyTorch's and Gluon's default; Keras' is 1e-3).
BN_EPSILON = 1e-5
#: BatchNorm momentum in PyTorch's convention: ``running = (1 - m) * running + m * batch``.
#: Keras and Gluon count the other way round and get ``1 - BN_MOMENTUM`` (0.9).
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class StageSpec:
    """One stage (torchvision's ``layerN``): ``blocks`` residual blocks of ``channels``."""

    channels: int
    blocks: int
    stride: int


@dataclass(frozen=True)
class ResNetSpec:
    """A whole network. The defaults are the D2L chapter's ResNet-18."""

    name: str
    block: str  # "basic" (two 3x3 convolutions); later "bottleneck", "preact", ...
    stages: Tuple[StageSpec, ...]
    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_padding: int = 3
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_padding: int = 1
    #: The chapter's convolutions carry biases (torchvision's do not).
    conv_bias: bool = True

    @property
    def expansion(self) -> int:
        return BLOCK_EXPANSION[self.block]

    @property
    def feature_channels(self) -> int:
        return self.stages[-1].channels * self.expansion


#: Output channels of a block relative to its ``channels`` (torchvision's ``expansion``).
BLOCK_EXPANSION: Dict[str, int] = {"basic": 1}

RESNET_SPECS: Dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec(
        name="resnet18",
        block="basic",
        stages=(
            StageSpec(64, 2, 1),
            StageSpec(128, 2, 2),
            StageSpec(256, 2, 2),
            StageSpec(512, 2, 2),
        ),
    ),
}


def get_spec(arch="resnet18") -> ResNetSpec:
    """Return the spec for ``arch`` (a name in :data:`RESNET_SPECS` or a spec itself)."""
    if isinstance(arch, ResNetSpec):
        return arch
    try:
        return RESNET_SPECS[arch]
    except KeyError:
        known = ", ".join(sorted(RESNET_SPECS))
        raise ValueError(f"unknown architecture {arch!r}; known: {known}") from None


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
    #: 1x1 strided convolution (with bias, no BatchNorm) on the shortcut, as in the chapter.
    use_1x1conv: bool


def iter_blocks(arch="resnet18") -> Iterator[BlockConfig]:
    """Yield every residual block in order, with its channels, stride and shortcut.

    The first block of a stage takes the stage's stride; a block whose stride is not 1 or
    whose channel count changes gets the 1x1 convolution on its shortcut (the chapter's
    ``use_1x1conv=True``), so the first stage of ResNet-18 has none.
    """
    spec = get_spec(arch)
    in_channels = spec.stem_channels
    for stage_number, stage in enumerate(spec.stages, start=1):
        out_channels = stage.channels * spec.expansion
        for index in range(stage.blocks):
            stride = stage.stride if index == 0 else 1
            yield BlockConfig(
                name=f"layer{stage_number}.{index}",
                stage=stage_number,
                index=index,
                in_channels=in_channels,
                channels=stage.channels,
                out_channels=out_channels,
                stride=stride,
                use_1x1conv=stride != 1 or in_channels != out_channels,
            )
            in_channels = out_channels


def _conv(prefix, out_channels, in_channels, kernel, bias):
    shapes = {f"{prefix}.weight": (out_channels, in_channels, kernel, kernel)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_channels,)
    return shapes


def _bn(prefix, channels):
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}


def parameter_shapes(arch="resnet18", in_channels=1, num_classes=10) -> Dict[str, Tuple[int, ...]]:
    """Canonical name -> shape of every array in a network's weights, in build order.

    Names and layouts are torchvision's (``conv1.weight`` OIHW, ``bn1.running_var``,
    ``layer2.0.downsample.0.weight``, ``fc.weight`` as ``(out, in)``); BatchNorm running
    statistics are included (see :func:`is_buffer`), ``num_batches_tracked`` is not.
    """
    spec = get_spec(arch)
    _check_positive(in_channels=in_channels, num_classes=num_classes)
    shapes: Dict[str, Tuple[int, ...]] = {}
    shapes.update(_conv("conv1", spec.stem_channels, in_channels, spec.stem_kernel, spec.conv_bias))
    shapes.update(_bn("bn1", spec.stem_channels))
    for block in iter_blocks(spec):
        if spec.block != "basic":  # pragma: no cover - one row per block type, added with it
            raise NotImplementedError(f"block type {spec.block!r}")
        shapes.update(_conv(f"{block.name}.conv1", block.channels, block.in_channels, 3, spec.conv_bias))
        shapes.update(_bn(f"{block.name}.bn1", block.channels))
        shapes.update(_conv(f"{block.name}.conv2", block.out_channels, block.channels, 3, spec.conv_bias))
        shapes.update(_bn(f"{block.name}.bn2", block.out_channels))
        if block.use_1x1conv:
            shapes.update(_conv(f"{block.name}.downsample.0", block.out_channels, block.in_channels, 1, True))
    shapes["fc.weight"] = (num_classes, spec.feature_channels)
    shapes["fc.bias"] = (num_classes,)
    return shapes


V = TypeVar("V")

#: The frameworks' names for a layer's arrays (Keras', Gluon's) -> the canonical (torchvision's).
CANONICAL_PARTS = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"}
#: Block type -> the chapter's names inside a block that torchvision names otherwise.
CHAPTER_BLOCK_PARTS = {"basic": {"conv3": "downsample.0"}}


def is_residual_block(sublayer_names) -> bool:
    """Whether a layer with these sublayer names is a residual block (it has a conv1 and a conv2,
    as the chapter's, the book's and torchvision's blocks do): one unit of :func:`canonical_names`."""
    return {"conv1", "conv2"} <= set(sublayer_names)


def canonical_names(units: Sequence[Mapping[str, V]], arch="resnet18", in_channels=1, num_classes=10,
                    shape: Callable[[V], Sequence[int]] = lambda value: tuple(value.shape)) -> Dict[str, V]:
    """Canonical name -> array of a network given as its units: the mapping every backend uses.

    ``units`` are the network's layers with weights and its residual blocks, in the order they
    run (stem convolution, stem BatchNorm, each block, classifier), each as *name within the
    unit -> array* in the framework's own words (``weight``, ``gamma``, ``conv1.kernel``,
    ``conv3.weight``). A unit's position gives its prefix (``layer2.0``); its names are renamed
    part by part with :data:`CANONICAL_PARTS` and :data:`CHAPTER_BLOCK_PARTS`. So a ResNet, the chapter's ``Sequential`` and the
    book's own code (with ``conv3``) map alike. ``shape(array)`` is its shape in canonical
    layout; unknown dimensions (None, 0 or -1: not yet inferred) pass the check.
    """
    spec = get_spec(arch)
    shapes = parameter_shapes(spec, in_channels, num_classes)
    prefixes = ["conv1", "bn1"] + [block.name for block in iter_blocks(spec)] + ["fc"]
    how = "build it with resnet() or the chapter's Residual and resnet_block"
    if len(units) != len(prefixes):
        raise ValueError(f"the network has {len(units)} layers with weights and residual blocks, {spec.name} has "
                         f"{len(prefixes)} (stem convolution and BatchNorm, {len(prefixes) - 3} blocks, dense); {how}")
    renames = {**CANONICAL_PARTS, **CHAPTER_BLOCK_PARTS.get(spec.block, {})}
    named = {}
    for prefix, unit in zip(prefixes, units):
        for key, value in unit.items():
            named[".".join([prefix] + [renames.get(part, part) for part in key.split(".")])] = value
    unexpected, missing = [n for n in named if n not in shapes], [n for n in shapes if n not in named]
    if unexpected or missing:
        raise ValueError(f"the network's weights do not map to {spec.name}'s: unexpected {unexpected[:3]}, "
                         f"missing {missing[:3]}; {how}")
    for name, want in shapes.items():
        have = tuple(shape(named[name]))
        if len(have) != len(want) or not all(d in (None, 0, -1, w) for d, w in zip(have, want)):
            raise ValueError(f"network weight '{name}' has shape {have}, {spec.name}'s is {want}; {how}")
    return {name: named[name] for name in shapes}


def is_buffer(name: str) -> bool:
    """True for BatchNorm running statistics: state, not trainable parameters."""
    return name.endswith(".running_mean") or name.endswith(".running_var")


def trainable_parameter_names(arch="resnet18", in_channels=1, num_classes=10) -> List[str]:
    return [n for n in parameter_shapes(arch, in_channels, num_classes) if not is_buffer(n)]


def count_parameters(arch="resnet18", in_channels=1, num_classes=10, trainable_only=True) -> int:
    """Number of scalars; 11,178,378 trainable for ResNet-18, 1 input channel, 10 classes."""
    total = 0
    for name, shape in parameter_shapes(arch, in_channels, num_classes).items():
        if trainable_only and is_buffer(name):
            continue
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


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


# Where the backends' fast paths (their kernels.py) take over from the framework's own layers.
# Each path computes the same function as the layer it replaces (the oracle tests run both ways).

#: A convolution whose input pixels times output pixels are at most this (2 x 2 -> 2 x 2,
#: 2 x 2 -> 1 x 1, 1 x 1 -> 1 x 1: layer3/layer4 at 28 x 28) runs as one dense layer with
#: the kernel unfolded by :func:`tap_selection`.
DENSE_CONV_MAX_PIXEL_PAIRS = 16
#: A convolution with at most this many output pixels per map (layer4 at 96 x 96) takes a
#: matrix-product (im2col) path: for its weight gradient in PyTorch, for the whole layer in
#: TensorFlow and MXNet.
MATMUL_CONV_MAX_OUTPUT_PIXELS = 9
#: ... and so does one with at most this many input channels (the one-channel stem).
MATMUL_CONV_MAX_IN_CHANNELS = 4


def tap_selection(size, kernel, stride, padding) -> np.ndarray:
    """The 0/1 matrix that turns a convolution on a tiny map into one dense layer.

    Shape ``(kh * kw, Ho * Wo * H * W)``: column ``(i, j, a, b)`` (row-major) has a 1 in the
    row of the kernel tap joining output pixel ``(i, j)`` to input pixel ``(a, b)`` of an
    ``H x W`` map, and none where no tap joins them (the window misses that pixel). The
    kernel ``(O, C, kh * kw)`` times this matrix is, rearranged to ``(O * Ho * Wo, C * H * W)``,
    the weight of a dense layer on the flattened input map that computes the convolution:
    the same terms, summed in another order. ``size``, ``kernel``, ``stride`` and
    ``padding`` are (height, width) pairs.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, kernel, stride, padding
    out_h, out_w = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    i, j, a, b = np.meshgrid(np.arange(out_h), np.arange(out_w), np.arange(h), np.arange(w), indexing="ij")
    row, col = (a - i * sh + ph).ravel(), (b - j * sw + pw).ravel()
    valid = (row >= 0) & (row < kh) & (col >= 0) & (col < kw)
    selection = np.zeros((kh * kw, out_h * out_w * h * w), dtype=np.float32)
    selection[(row * kw + col)[valid], np.flatnonzero(valid)] = 1.0
    return selection


def stage_output_shapes(arch="resnet18", in_channels=1, height=224, width=224, num_classes=10):
    """Per-example output shape (channels first) after each stage, as the chapter prints them.

    Returns ``[("stem", (64, 56, 56)), ("layer1", ...), ..., ("pool", (512,)), ("fc", (10,))]``
    for a 224 x 224 input.
    """
    spec = get_spec(arch)
    h = conv_output_size(height, spec.stem_kernel, spec.stem_stride, spec.stem_padding)
    w = conv_output_size(width, spec.stem_kernel, spec.stem_stride, spec.stem_padding)
    h = conv_output_size(h, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
    w = conv_output_size(w, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
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


def forward_flops_per_example(arch="resnet18", in_channels=1, height=96, width=96, num_classes=10) -> int:
    """Multiply-adds x 2 of the convolutions and the dense layer for one example.

    BatchNorm, ReLU, pooling and additions are left out (a few percent); the count is the
    same for every backend, which is what the benchmark's ratios need.
    """
    spec = get_spec(arch)
    flops = 0

    def conv(cin, cout, k, stride, pad, h, w):
        ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
        return 2 * cin * cout * k * k * ho * wo, ho, wo

    f, h, w = conv(in_channels, spec.stem_channels, spec.stem_kernel, spec.stem_stride, spec.stem_padding, height, width)
    flops += f
    h = conv_output_size(h, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
    w = conv_output_size(w, spec.pool_kernel, spec.pool_stride, spec.pool_padding)
    for block in iter_blocks(spec):
        f1, h1, w1 = conv(block.in_channels, block.channels, 3, block.stride, 1, h, w)
        f2, _, _ = conv(block.channels, block.out_channels, 3, 1, 1, h1, w1)
        flops += f1 + f2
        if block.use_1x1conv:
            flops += conv(block.in_channels, block.out_channels, 1, block.stride, 0, h, w)[0]
        h, w = h1, w1
    flops += 2 * spec.feature_channels * num_classes
    return flops


def training_flops_per_example(arch="resnet18", in_channels=1, height=96, width=96, num_classes=10) -> int:
    """Forward plus backward (input and weight gradients): three times the forward count."""
    return 3 * forward_flops_per_example(arch, in_channels, height, width, num_classes)


def _check_positive(**values):
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
