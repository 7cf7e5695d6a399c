"""ResNet in JAX and Flax linen: the chapter's blocks and network, built from :mod:`common.spec`.

Where a Flax layer computes another function than the other backends (``padding='same'``,
Flax's BatchNorm), the chapter's code calls a helper of :mod:`resnet_jax.kernels` by name. Every
convolution is made by the module's ``conv`` field (Flax's ``conv: ModuleDef``), the network's
pools by its ``layers`` (:mod:`common.fastpaths`): :func:`resnet` builds from the kernels' fast
layers unless plain.

A Flax module holds no weights: ``module.init`` makes them and ``module.apply`` takes them. What
this backend calls a network (``net``, as the other backends' functions take it) is a
:class:`Network`: the module (``net.module``, built in training mode, ``training=True`` as in the
book), its variables (``net.variables``: ``{"params": ..., "batch_stats": ...}``), its spec, input
channels and classes.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.traverse_util import flatten_dict, unflatten_dict

from common import autotune
from common.fastpaths import Layers, plain_layers
from common.layout import from_canonical_layout, to_canonical_layout
from common.naming import canonical_names, is_residual_block, parameter_shapes
from common.spec import ResNetSpec, check_input_shape, get_spec, iter_blocks
from common.weights import check_weights, init_weights

from . import kernels
from .data import to_numpy, to_tensor
from .kernels import PLAIN, batch_norm, conv2d

__all__ = ["DATA_FORMAT", "Residual", "resnet_block", "Bottleneck", "ResNeXtBlock", "PreActResidual",
           "PreActBottleneck", "BLOCK_BUILDERS", "ResNet", "Network", "resnet", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "resnext50_32x4d", "count_parameters", "architecture", "canonical_variables",
           "export_weights", "import_weights", "forward", "trace_shapes"]

#: The layout the network takes: channels last, as Flax's convolutions and the book's JAX code.
DATA_FORMAT = "NHWC"

#: What makes a layer, as Flax's examples type it: a module class or a function returning a module.
ModuleDef = Callable[..., Any]


class Residual(nn.Module):
    """The Residual block of ResNet models."""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True
    # Beyond the chapter: the styles' choices (see common.spec) and the convolution (common.fastpaths).
    bias: bool = True
    norm_shortcut: bool = False
    conv: ModuleDef = conv2d

    def setup(self):
        self.conv1 = self.conv(self.num_channels, kernel_size=3, strides=self.strides, padding=1, use_bias=self.bias)
        self.conv2 = self.conv(self.num_channels, kernel_size=3, padding=1, use_bias=self.bias)
        if self.use_1x1conv:  # the chapter's conv3, under torchvision's name
            self.downsample = _projection(self.num_channels, self.strides, self.training, bias=self.bias,
                                          norm=self.norm_shortcut, conv=self.conv)
        else:
            self.downsample = None
        self.bn1 = batch_norm(not self.training)
        self.bn2 = batch_norm(not self.training)

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        Y += X
        return nn.relu(Y)


def resnet_block(num_channels, num_residuals, first_block=False, training=True):
    """The chapter's stage: ``num_residuals`` blocks, the first one halving H and W (the book's JAX
    ``ResNet.block(num_residuals, num_channels, first_block)``, as a function)."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=(2, 2), training=training))
        else:
            blk.append(Residual(num_channels, training=training))
    return nn.Sequential(blk)


# --- the chapter's exercises: deeper networks, other blocks, other styles ----------------------

def _projection(num_channels, strides, training, *, bias=True, norm=False, conv=conv2d):
    """The shortcut's strided 1x1 convolution (``downsample.0``), with a BatchNorm after it
    (``downsample.1``) where ``norm`` is set (torchvision's style)."""
    layers = [conv(num_channels, kernel_size=1, strides=strides, use_bias=bias)]
    if norm:
        layers.append(batch_norm(not training))
    return nn.Sequential(layers)


class _BottleneckLayers(nn.Module):
    """The layers and the forward pass of :class:`Bottleneck` and :class:`ResNeXtBlock`, which
    give the fields (a Flax subclass cannot put its own fields before its parent's, as the book's
    ``ResNeXtBlock(num_channels, groups, bot_mul)`` needs) and :meth:`widths`."""

    def widths(self) -> Tuple[int, int]:
        """The 3x3 convolution's channels and groups."""
        raise NotImplementedError

    def setup(self):
        bot_channels, groups = self.widths()
        self.conv1 = self.conv(bot_channels, kernel_size=1, use_bias=self.bias)
        self.conv2 = self.conv(bot_channels, kernel_size=3, strides=self.strides, padding=1, groups=groups,
                               use_bias=self.bias)
        self.conv3 = self.conv(self.num_channels, kernel_size=1, use_bias=self.bias)
        self.bn1 = batch_norm(not self.training)
        self.bn2 = batch_norm(not self.training)
        self.bn3 = batch_norm(not self.training)
        if self.use_1x1conv:
            self.downsample = _projection(self.num_channels, self.strides, self.training, bias=self.bias,
                                          norm=self.norm_shortcut, conv=self.conv)
        else:
            self.downsample = None

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return nn.relu(Y + X)


class Bottleneck(_BottleneckLayers):
    """The bottleneck block of ResNet-50 and deeper: 1x1 convolution down to ``bot_channels``
    (default ``num_channels // 4``), 3x3 convolution (with the stride, in ``groups`` groups), 1x1
    convolution up to ``num_channels``, each followed by BatchNorm; ReLU after the first two and
    after the addition of the shortcut."""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True
    bot_channels: Optional[int] = None
    groups: int = 1
    bias: bool = True
    norm_shortcut: bool = False
    conv: ModuleDef = conv2d

    def widths(self) -> Tuple[int, int]:
        return (self.num_channels // 4 if self.bot_channels is None else self.bot_channels), self.groups


class ResNeXtBlock(_BottleneckLayers):
    """The ResNeXt block, with the book's signature: ``bot_channels = int(round(num_channels *
    bot_mul))`` and a 3x3 convolution in groups of ``groups`` channels each (``bot_channels //
    groups`` groups). A :class:`Bottleneck` otherwise; unlike the book's block (``conv4`` and
    ``bn4``), its shortcut follows the style: a BatchNorm after the 1x1 convolution only with
    ``norm_shortcut=True``."""
    num_channels: int
    groups: int
    bot_mul: float
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True
    bias: bool = True
    norm_shortcut: bool = False
    conv: ModuleDef = conv2d

    def widths(self) -> Tuple[int, int]:
        bot_channels = int(round(self.num_channels * self.bot_mul))
        return bot_channels, bot_channels // self.groups


class PreActResidual(nn.Module):
    """The pre-activation residual block (He et al. 2016): BatchNorm, ReLU, convolution, twice; the
    shortcut is the input itself, or the 1x1 convolution of the pre-activated input. No ReLU after
    the addition."""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True
    bias: bool = True
    conv: ModuleDef = conv2d

    def setup(self):
        self.bn1 = batch_norm(not self.training)
        self.conv1 = self.conv(self.num_channels, kernel_size=3, strides=self.strides, padding=1, use_bias=self.bias)
        self.bn2 = batch_norm(not self.training)
        self.conv2 = self.conv(self.num_channels, kernel_size=3, padding=1, use_bias=self.bias)
        if self.use_1x1conv:
            self.downsample = _projection(self.num_channels, self.strides, self.training, bias=self.bias,
                                          conv=self.conv)
        else:
            self.downsample = None

    def __call__(self, X):
        A = nn.relu(self.bn1(X))
        Y = self.conv1(A)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        if self.downsample is not None:
            X = self.downsample(A)
        return Y + X


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck block: BatchNorm, ReLU, convolution for each of the
    :class:`Bottleneck`'s three convolutions; shortcut as in :class:`PreActResidual`."""
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True
    bot_channels: Optional[int] = None
    groups: int = 1
    bias: bool = True
    conv: ModuleDef = conv2d

    def setup(self):
        bot_channels = self.num_channels // 4 if self.bot_channels is None else self.bot_channels
        self.bn1 = batch_norm(not self.training)
        self.conv1 = self.conv(bot_channels, kernel_size=1, use_bias=self.bias)
        self.bn2 = batch_norm(not self.training)
        self.conv2 = self.conv(bot_channels, kernel_size=3, strides=self.strides, padding=1, groups=self.groups,
                               use_bias=self.bias)
        self.bn3 = batch_norm(not self.training)
        self.conv3 = self.conv(self.num_channels, kernel_size=1, use_bias=self.bias)
        if self.use_1x1conv:
            self.downsample = _projection(self.num_channels, self.strides, self.training, bias=self.bias,
                                          conv=self.conv)
        else:
            self.downsample = None

    def __call__(self, X):
        A = nn.relu(self.bn1(X))
        Y = self.conv1(A)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        Y = self.conv3(nn.relu(self.bn3(Y)))
        if self.downsample is not None:
            X = self.downsample(A)
        return Y + X


#: :attr:`common.spec.ResNetSpec.block_kind` -> one block from its
#: :class:`common.spec.BlockConfig`, the network's spec and layers, and its mode (a Flax field).
BLOCK_BUILDERS = {
    "basic": lambda block, spec, layers, training=True: Residual(
        block.out_channels, block.use_1x1conv, block.stride, training, bias=spec.conv_bias,
        norm_shortcut=spec.norm_shortcut, conv=layers.conv),
    "bottleneck": lambda block, spec, layers, training=True: Bottleneck(
        block.out_channels, block.use_1x1conv, block.stride, training, bot_channels=block.channels,
        groups=block.groups, bias=spec.conv_bias, norm_shortcut=spec.norm_shortcut, conv=layers.conv),
    "preact_basic": lambda block, spec, layers, training=True: PreActResidual(
        block.out_channels, block.use_1x1conv, block.stride, training, bias=spec.conv_bias, conv=layers.conv),
    "preact_bottleneck": lambda block, spec, layers, training=True: PreActBottleneck(
        block.out_channels, block.use_1x1conv, block.stride, training, bot_channels=block.channels,
        groups=block.groups, bias=spec.conv_bias, conv=layers.conv),
}


class ResNet(nn.Module):
    """ResNet built from :mod:`common.spec`, laid out as torchvision's (stem, layer1..4, fc).

    ``arch`` is a name of :data:`common.spec.RESNET_SPECS`, a spec, or the book's tuple of
    ``(num_residuals, num_channels)`` pairs; ``style`` one of :data:`common.spec.STYLES`;
    ``layers`` what its convolutions and pools are made by (:mod:`common.fastpaths`). A
    pre-activation network has a final BatchNorm (``norm``) and ReLU before pooling.
    The stem is the spec's (``get_spec(arch, stem="small")``: 3x3 convolution, no ``maxpool``).
    ``training`` as in the book's modules (batch statistics, updated running ones); ``dtype``
    the convolutions' and the dense layer's compute dtype (None: float32).
    """
    arch: Any = "resnet18"
    num_classes: int = 10
    in_channels: int = 1
    style: str = "d2l"
    layers: Layers = PLAIN
    training: bool = True
    dtype: Any = None

    @property
    def spec(self) -> ResNetSpec:
        return get_spec(self.arch, self.style)

    def setup(self):
        spec = self.spec
        # The compute dtype bound into every convolution, as Flax's imagenet example binds it.
        layers = self.layers._replace(conv=functools.partial(self.layers.conv, dtype=self.dtype))
        self.conv1 = layers.conv(spec.stem_channels, kernel_size=spec.stem_kernel, strides=spec.stem_stride,
                                 padding=spec.stem_padding, use_bias=spec.conv_bias)
        self.bn1 = batch_norm(not self.training)
        if spec.max_pool:
            self.maxpool = layers.max_pool(spec.pool_kernel, spec.pool_stride, spec.pool_padding)
        else:  # the small stem (common.spec.STEMS): stage 1 at the input's size
            self.maxpool = None
        stages: Dict[int, list] = {}
        for block in iter_blocks(spec):
            stages.setdefault(block.stage, []).append(
                BLOCK_BUILDERS[spec.block_kind](block, spec, layers, self.training))
        for number, blocks in stages.items():
            setattr(self, f"layer{number}", blocks)
        self.norm = batch_norm(not self.training) if spec.preact else None
        self.avgpool = layers.global_pool()
        self.fc = nn.Dense(self.num_classes, dtype=self.dtype)

    def _stem(self, x):
        x = nn.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

    def _pool(self, x):
        if self.norm is not None:  # pre-activation: the last block's output is not yet normalised
            x = nn.relu(self.norm(x))
        return self.avgpool(x)

    def stages(self):
        """(name, function(x)) for each stage of :func:`common.spec.stage_output_shapes`."""
        blocks = [(f"layer{number}", functools.partial(self._stage, number))
                  for number in range(1, len(self.spec.stages) + 1)]
        return [("stem", self._stem)] + blocks + [("pool", self._pool), ("fc", self.fc)]

    def _stage(self, number, x):
        for block in getattr(self, f"layer{number}"):
            x = block(x)
        return x

    def stage_outputs(self, x):
        """Each stage's output, in :meth:`stages` order (the chapter's layer-by-layer loop)."""
        check_input_shape(x.shape, self.in_channels, DATA_FORMAT)
        outputs = []
        for _, run in self.stages():
            x = run(x)
            outputs.append(x)
        return outputs

    def __call__(self, x):
        check_input_shape(x.shape, self.in_channels, DATA_FORMAT)
        for _, run in self.stages():
            x = run(x)
        return x


# --- the network: a module and its variables ---------------------------------------------------

class Network:
    """A Flax module and its variables, as this backend's functions take a network.

    ``Network(module, in_channels=1)`` makes the variables without running the module
    (``jax.eval_shape`` of its ``init`` in evaluation mode, at 32 x 32) and fills them with
    :func:`common.weights.init_weights` for seed 0, the common initialisation of every backend.
    ``module`` is a :class:`ResNet`, the chapter's network or the book's (anything whose variables
    map to a spec's canonical names, see :func:`canonical_variables`); it is kept in training mode
    when it has a ``training`` field, and :func:`forward` and the Trainer clone it with
    ``training=False`` for evaluation. It runs the layers it was built from.
    """

    def __init__(self, module: nn.Module, in_channels: int = 1):
        self.module, self.in_channels = module, in_channels
        shapes, order = _initial_shapes(module, in_channels)
        # (host arrays: jnp.zeros would compile once per shape, and import_weights replaces them all)
        self.variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        units = _units(_merged(order))
        if isinstance(module, ResNet):
            self.spec, self.num_classes = module.spec, module.num_classes
        else:  # the chapter's or the book's ResNet-18
            if len(units) < 2:
                raise ValueError(f"{type(module).__name__} is not a ResNet: it has no convolution or no dense layer")
            self.spec, self.num_classes = get_spec("resnet18"), int(units[-1]["kernel"][2][-1])
        self.layout = canonical_names(units, self.spec, in_channels, self.num_classes,
                                      shape=lambda ref: _canonical_shape(ref[2]))
        import_weights(self, init_weights(self.spec, 0, in_channels, self.num_classes))

    def mode(self, training: bool) -> nn.Module:
        """The module in training or evaluation mode."""
        if "training" in getattr(self.module, "__dataclass_fields__", {}) and self.module.training != training:
            return self.module.clone(training=training)
        return self.module

    def __repr__(self):
        layers = getattr(self.module, "layers", None)
        built = f", layers={layers.name}" if isinstance(layers, Layers) else ""
        return f"Network({self.spec.label}, in_channels={self.in_channels}, num_classes={self.num_classes}{built})"


def _initial_shapes(module, in_channels):
    """The module's variables as shapes (nothing computed), and, in the order Flax created them (the
    order the layers run), each one's ``(collection, path, shape)``."""
    order = []

    def init(x):
        variables = module.clone(training=False).init(jax.random.PRNGKey(0), x) \
            if "training" in getattr(module, "__dataclass_fields__", {}) else module.init(jax.random.PRNGKey(0), x)
        order.extend((key[0], key[1:], tuple(leaf.shape)) for key, leaf in flatten_dict(variables).items())
        return variables

    shapes = jax.eval_shape(init, jax.ShapeDtypeStruct((2, 32, 32, in_channels), jnp.float32))
    return shapes, order


def _merged(order):
    """One nested dict of every variable, ``path -> (collection, path, shape)``, params first and each
    module's BatchNorm statistics beside its parameters, in the order the layers were created."""
    return unflatten_dict({path: (collection, path, shape)
                           for collection, path, shape in sorted(order, key=lambda item: item[0] != "params")})


#: Flax's names for a layer's arrays -> the canonical (kernel -> weight is in common.naming's table).
_FLAX_PARTS = {"scale": "weight", "mean": "running_mean", "var": "running_var"}


def _local_name(path) -> str:
    """A name within a unit: Sequential's ``layers_0`` as ``0``, Flax's ``scale`` as ``weight`` ..."""
    parts = [key[len("layers_"):] if key.startswith("layers_") and key[7:].isdigit() else key for key in path]
    parts[-1] = _FLAX_PARTS.get(parts[-1], parts[-1])
    return ".".join(parts)


def _units(tree) -> List[Dict[str, tuple]]:
    """The network's layers with weights and its residual blocks (what has a conv1 and a conv2), in
    order, each as its structural names; see :func:`common.naming.canonical_names`."""
    if all(not isinstance(value, dict) for value in tree.values()) or is_residual_block(tree):
        return [{_local_name(path): ref for path, ref in flatten_dict(tree).items()}]
    units = []
    for value in tree.values():
        if isinstance(value, dict):
            units.extend(_units(value))
    return units


def resnet(arch="resnet18", num_classes=10, in_channels=1, style="d2l", plain=None, dtype=None) -> Network:
    """The network ``arch`` (see :class:`ResNet`) in ``style``, variables made, built from the
    kernels' fast layers unless :func:`common.fastpaths.plain_layers` (``plain``) says plain ones;
    ``dtype``: the compute dtype (mixed precision's)."""
    spec = get_spec(arch, style)
    parameter_shapes(spec, in_channels, num_classes)  # validates in_channels and num_classes
    arch = spec.name if spec == get_spec(spec.name, spec.style) else spec
    layers = kernels.PLAIN if plain_layers(plain) else kernels.FAST
    return Network(ResNet(arch, num_classes, in_channels, spec.style, layers, dtype=dtype), in_channels)


def resnet18(num_classes=10, in_channels=1, style="d2l", plain=None) -> Network:
    return resnet("resnet18", num_classes, in_channels, style, plain)


def resnet34(num_classes=10, in_channels=1, style="d2l", plain=None) -> Network:
    return resnet("resnet34", num_classes, in_channels, style, plain)


def resnet50(num_classes=10, in_channels=1, style="d2l", plain=None) -> Network:
    return resnet("resnet50", num_classes, in_channels, style, plain)


def resnet101(num_classes=10, in_channels=1, style="d2l", plain=None) -> Network:
    return resnet("resnet101", num_classes, in_channels, style, plain)


def resnet152(num_classes=10, in_channels=1, style="d2l", plain=None) -> Network:
    return resnet("resnet152", num_classes, in_channels, style, plain)


def resnext50_32x4d(num_classes=10, in_channels=1, style="d2l", plain=None) -> Network:
    return resnet("resnext50_32x4d", num_classes, in_channels, style, plain)


def count_parameters(net) -> int:
    """Number of trainable scalars (BatchNorm running statistics are state, not counted)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(net.variables["params"]))


def architecture(net) -> Tuple[ResNetSpec, int, int]:
    """(spec, in_channels, num_classes) of a :class:`Network` (its spec with its style)."""
    if not isinstance(net, Network):
        raise TypeError(f"expected a resnet_jax Network (module and variables), got {type(net).__name__}; "
                        f"build one with resnet() or Network(module)")
    return net.spec, net.in_channels, net.num_classes


def _canonical_shape(shape) -> Tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape[::-1])


def canonical_variables(net) -> Dict[str, jax.Array]:
    """Canonical name -> the net's array (Flax's layout: HWIO kernels, (in, out) dense), in spec
    order: a :class:`ResNet`, the chapter's network or the book's, by :func:`common.naming.canonical_names`."""
    variables = flatten_dict(net.variables)
    return {name: variables[(collection,) + path] for name, (collection, path, _) in net.layout.items()}


def export_weights(net) -> Dict[str, np.ndarray]:
    """Canonical name -> float32 NumPy copy in canonical layout, in spec order."""
    return {name: to_canonical_layout(value) for name, value in canonical_variables(net).items()}


def import_weights(net, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical ``weights`` into ``net`` exactly, after checking names and shapes (new arrays:
    JAX's are immutable)."""
    spec, in_channels, num_classes = architecture(net)
    check_weights(weights, spec, in_channels=in_channels, num_classes=num_classes)
    variables = flatten_dict(net.variables, keep_empty_nodes=True)
    for name, (collection, path, _) in net.layout.items():
        variables[(collection,) + path] = jnp.asarray(from_canonical_layout(weights[name]))
    net.variables = unflatten_dict(variables)


@functools.lru_cache(maxsize=None)
def _forward_function(module, fast_paths_mode):
    """The jitted forward pass of ``module`` (in its own mode): logits and the batch statistics after
    it. ``fast_paths_mode`` (:func:`common.autotune.fast_paths_mode`, which the fast layers read as
    they are traced) is a key only: another mode compiles anew."""
    def run(variables, x):
        if "batch_stats" in variables and _is_training(module):
            logits, updates = module.apply(variables, x, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return module.apply(variables, x), variables.get("batch_stats")
    return jax.jit(run)


def _is_training(module) -> bool:
    return bool(getattr(module, "training", False))


def forward(net, images, training=False) -> np.ndarray:
    """Logits (NumPy) for an NCHW NumPy batch; ``training=True`` uses and updates batch statistics."""
    check_input_shape(np.shape(images), architecture(net)[1], "NCHW")
    with kernels.precision_scope("fp32"):
        logits, batch_stats = _forward_function(net.mode(training), autotune.fast_paths_mode())(net.variables,
                                                                                                 to_tensor(images))
    if training:
        net.variables = {**net.variables, "batch_stats": batch_stats}
    return to_numpy(logits.astype(jnp.float32))


def trace_shapes(net, images) -> List[Tuple[str, tuple]]:
    """(stage name, NCHW output shape) through stem, layer1..4, pool and fc, in eval mode (shapes
    only: nothing is computed)."""
    check_input_shape(np.shape(images), net.in_channels, "NCHW")
    module = net.mode(False)
    n, c, h, w = np.shape(images)
    x = jax.ShapeDtypeStruct((n, h, w, c), jnp.float32)
    outputs = jax.eval_shape(lambda v, x: module.apply(v, x, method=ResNet.stage_outputs), net.variables, x)
    names = ["stem"] + [f"layer{i}" for i in range(1, len(net.spec.stages) + 1)] + ["pool", "fc"]
    return [(name, _nchw_shape(out.shape)) for name, out in zip(names, outputs)]


def _nchw_shape(shape):
    return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape)
