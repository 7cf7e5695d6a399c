"""Canonical names: every backend's weights under torchvision's ``state_dict`` names.

The one naming vocabulary of the project: ``conv1.weight`` (OIHW), ``bn1.running_var``,
``layer2.0.downsample.0.weight``, ``fc.weight`` as ``(out, in)``; a pre-activation network's
final BatchNorm is ``norm`` (timm's name). :func:`parameter_shapes` lists them for an
architecture of :mod:`common.spec`; :func:`canonical_names` maps a framework's own words
(Keras' ``kernel`` and ``moving_variance``, Gluon's ``gamma``, the book's ``conv3`` shortcut) onto
them, the one mapping every backend uses.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Tuple, TypeVar

from .spec import BlockConfig, ResNetSpec, block_convs, check_positive, get_spec, iter_blocks

__all__ = [
    "parameter_shapes",
    "unit_prefixes",
    "CANONICAL_PARTS",
    "CHAPTER_BLOCK_PARTS",
    "is_residual_block",
    "canonical_names",
    "is_buffer",
    "trainable_parameter_names",
    "count_parameters",
]


def _conv(prefix, out_channels, in_channels, kernel, bias, groups=1):
    shapes = {f"{prefix}.weight": (out_channels, in_channels // groups, kernel, kernel)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_channels,)
    return shapes


def _bn(prefix, channels):
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}


def _block_shapes(spec: ResNetSpec, block: BlockConfig) -> Dict[str, Tuple[int, ...]]:
    """One block's arrays in the order they run: a BatchNorm after each convolution (before it
    in pre-activation blocks, so there ``bn1`` normalises the block's input), the shortcut last."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    convs = block_convs(block, spec, shortcut=False)
    for number, conv in enumerate(convs, start=1):
        conv_shapes = _conv(conv.name, conv.out_channels, conv.in_channels, conv.kernel, spec.conv_bias, conv.groups)
        if spec.preact:
            shapes.update(_bn(f"{block.name}.bn{number}", conv.in_channels))
            shapes.update(conv_shapes)
        else:
            shapes.update(conv_shapes)
            shapes.update(_bn(f"{block.name}.bn{number}", conv.out_channels))
    if block.use_1x1conv:
        shapes.update(_conv(f"{block.name}.downsample.0", block.out_channels, block.in_channels, 1, spec.conv_bias))
        if spec.norm_shortcut:
            shapes.update(_bn(f"{block.name}.downsample.1", block.out_channels))
    return shapes


def parameter_shapes(arch="resnet18", in_channels=1, num_classes=10) -> Dict[str, Tuple[int, ...]]:
    """Canonical name -> shape of every array in a network's weights, in build order.

    Names and layouts are torchvision's (``conv1.weight`` OIHW, ``bn1.running_var``,
    ``layer2.0.downsample.0.weight``, ``fc.weight`` as ``(out, in)``); BatchNorm running
    statistics are included (see :func:`is_buffer`), ``num_batches_tracked`` is not. A
    pre-activation network's final BatchNorm is ``norm`` (timm's name; torchvision has none).
    """
    spec = get_spec(arch)
    check_positive(in_channels=in_channels, num_classes=num_classes)
    shapes: Dict[str, Tuple[int, ...]] = {}
    shapes.update(_conv("conv1", spec.stem_channels, in_channels, spec.stem_kernel, spec.conv_bias))
    shapes.update(_bn("bn1", spec.stem_channels))
    for block in iter_blocks(spec):
        shapes.update(_block_shapes(spec, block))
    if spec.preact:
        shapes.update(_bn("norm", spec.feature_channels))
    shapes["fc.weight"] = (num_classes, spec.feature_channels)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def unit_prefixes(arch="resnet18") -> List[str]:
    """The canonical prefix of each unit of :func:`canonical_names`, in order: stem convolution and
    BatchNorm, each block, the final BatchNorm of a pre-activation network, the classifier."""
    spec = get_spec(arch)
    return ["conv1", "bn1"] + [block.name for block in iter_blocks(spec)] + (["norm"] if spec.preact else []) + ["fc"]


V = TypeVar("V")

#: The frameworks' names for a layer's arrays (Keras', Gluon's) -> the canonical (torchvision's).
CANONICAL_PARTS = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"}
#: Block type -> the book's names inside a block that torchvision names otherwise: the shortcut
#: of its ``Residual`` (``conv3``) and of its ``ResNeXtBlock`` (``conv4``, ``bn4``).
CHAPTER_BLOCK_PARTS = {"basic": {"conv3": "downsample.0"},
                       "bottleneck": {"conv4": "downsample.0", "bn4": "downsample.1"}}


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
    part by part with :data:`CANONICAL_PARTS` and :data:`CHAPTER_BLOCK_PARTS`. So a ResNet, the
    chapter's ``Sequential`` and the book's own code (with ``conv3``) map alike.
    ``shape(array)`` is its shape in canonical layout; unknown dimensions (None, 0 or -1: not yet
    inferred) pass the check.
    """
    spec = get_spec(arch)
    shapes = parameter_shapes(spec, in_channels, num_classes)
    prefixes = unit_prefixes(spec)
    how = "build it with resnet() or the chapter's Residual and resnet_block"
    if len(units) != len(prefixes):
        blocks = len(list(iter_blocks(spec)))
        raise ValueError(f"the network has {len(units)} layers with weights and residual blocks, {spec.label} has "
                         f"{len(prefixes)} (stem convolution and BatchNorm, {blocks} blocks, "
                         f"{'final BatchNorm, ' if spec.preact else ''}dense); {how}")
    renames = {**CANONICAL_PARTS, **CHAPTER_BLOCK_PARTS.get(spec.block, {})}
    named = {}
    for prefix, unit in zip(prefixes, units):
        for key, value in unit.items():
            named[".".join([prefix] + [renames.get(part, part) for part in key.split(".")])] = value
    unexpected, missing = [n for n in named if n not in shapes], [n for n in shapes if n not in named]
    if unexpected or missing:
        raise ValueError(f"the network's weights do not map to {spec.label}'s: unexpected {unexpected[:3]}, "
                         f"missing {missing[:3]}; {how}")
    for name, want in shapes.items():
        have = tuple(shape(named[name]))
        if len(have) != len(want) or not all(d in (None, 0, -1, w) for d, w in zip(have, want)):
            raise ValueError(f"network weight '{name}' has shape {have}, {spec.label}'s is {want}; {how}")
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
