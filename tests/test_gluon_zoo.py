"""An outside check of the "torchvision" style: MXNet's own model zoo (``mxnet.gluon.model_zoo.vision``).

Gluon's ``resnet18_v1`` and ``resnet34_v1``, written by MXNet's authors and not by us, have torchvision's
basic-block layout: bias-free convolutions, the stride on the block's first 3 x 3 convolution, a 1 x 1
convolution plus BatchNorm on the shortcut, BatchNorm epsilon 1e-5. Given our canonical "torchvision"-style
weights through a name map (:func:`zoo_to_canonical`), a zoo network must give the oracle's logits and
resnet_mx's, in evaluation mode and in training mode (batch statistics; the zoo's BatchNorm moves its
running statistics its own way, so only logits are compared). Built on the CPU, nothing downloaded.

The inputs are 64 x 64: in training mode a deeper network on smaller maps (32 x 32, layer4 on 1 x 1 maps,
4 values per BatchNorm channel) depends on float32 rounding by more than the 1e-4 bound (the oracle's own
logits move by 4e-4 under a 1e-6 relative jitter of the weights); at 64 x 64 by 5e-5 or less.
"""
import numpy as np
import pytest

from common import oracle
from common.naming import parameter_shapes
from common.spec import BN_EPSILON, get_spec, iter_blocks

from helpers import disturbed_weights, scaled_for_unit_logits

pytestmark = pytest.mark.backend("mx")

#: Gluon's names inside a BatchNorm -> the canonical ones.
BN_PARTS = {"gamma": "weight", "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}

#: (zoo builder, classes): both depths the zoo builds with basic blocks, both class counts.
CASES = [("resnet18", 1000), ("resnet34", 10)]


@pytest.fixture(scope="module")
def mx_backend(backend):
    return backend


def zoo_to_canonical(spec):
    """The zoo's structural parameter names (``features.5.0.body.3.weight``) -> canonical names.

    ``ResNetV1.features`` is [conv, BatchNorm, ReLU, max pool, stage 1, ..., stage 4, global pool]; a
    ``BasicBlockV1`` is ``body`` = [conv, BatchNorm, ReLU, conv, BatchNorm] and, where the shape changes,
    ``downsample`` = [1 x 1 conv, BatchNorm]; the classifier is ``output``. (Gluon's flat names,
    ``resnetv10_stage2_conv2_weight``, number the layers of a stage in one sequence and take a prefix
    counted per process, so they are not used.)
    """
    names = {"features.0.weight": "conv1.weight"}
    names.update({f"features.1.{part}": f"bn1.{canonical}" for part, canonical in BN_PARTS.items()})
    for block in iter_blocks(spec):
        zoo = f"features.{3 + block.stage}.{block.index}"
        layers = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2"}
        if block.use_1x1conv:
            layers.update({"downsample.0": "downsample.0", "downsample.1": "downsample.1"})
        for zoo_layer, layer in layers.items():
            if layer.startswith("conv") or layer == "downsample.0":
                names[f"{zoo}.{zoo_layer}.weight"] = f"{block.name}.{layer}.weight"
            else:
                names.update({f"{zoo}.{zoo_layer}.{part}": f"{block.name}.{layer}.{canonical}"
                              for part, canonical in BN_PARTS.items()})
    names.update({"output.weight": "fc.weight", "output.bias": "fc.bias"})
    return names


def zoo_network(name, classes):
    """The zoo's ``<name>_v1`` with random weights on the CPU, its shapes inferred (3 input channels)."""
    import mxnet as mx
    from mxnet import autograd
    from mxnet.gluon.model_zoo import vision

    zoo = getattr(vision, f"{name}_v1")(pretrained=False, classes=classes, ctx=mx.cpu())
    zoo.initialize(ctx=mx.cpu())
    with autograd.predict_mode():
        zoo(mx.nd.zeros((1, 3, 32, 32)))
    return zoo


def load_into_zoo(zoo, weights, names):
    import mxnet as mx

    params = dict(zoo._collect_params_with_prefix())
    for zoo_name, canonical in names.items():
        params[zoo_name].set_data(mx.nd.array(weights[canonical], dtype=np.float32))


def zoo_logits(zoo, images, mode):
    import mxnet as mx
    from mxnet import autograd

    x = mx.nd.array(images, dtype=np.float32)
    if mode == "eval":
        with autograd.predict_mode():
            return zoo(x).asnumpy()
    with autograd.train_mode() if mode == "train" else autograd.record():
        return zoo(x).asnumpy()


@pytest.mark.parametrize("name, classes", CASES, ids=[f"{name}_v1-{classes}" for name, classes in CASES])
def test_gluon_zoo_is_the_torchvision_style(mx_backend, name, classes):
    from mxnet.gluon import nn

    spec = get_spec(name, "torchvision")
    zoo = zoo_network(name, classes)

    # The layout: our name map covers the zoo's parameters and the canonical ones, one to one, shapes equal.
    names = zoo_to_canonical(spec)
    shapes = parameter_shapes(spec, in_channels=3, num_classes=classes)
    zoo_params = dict(zoo._collect_params_with_prefix())
    assert sorted(names) == sorted(zoo_params)
    assert sorted(names.values()) == sorted(shapes)
    for zoo_name, canonical in names.items():
        assert zoo_params[zoo_name].shape == shapes[canonical], (zoo_name, canonical)
    # ... the stride on the block's first 3 x 3 convolution (and on its shortcut), no convolution biases,
    # and BatchNorm's epsilon is ours.
    for block in iter_blocks(spec):
        unit = zoo.features[3 + block.stage][block.index]
        assert unit.body[0]._kwargs["stride"] == (block.stride, block.stride)
        assert unit.body[3]._kwargs["stride"] == (1, 1)
        assert (unit.downsample is not None) == block.use_1x1conv
        if block.use_1x1conv:
            assert unit.downsample[0]._kwargs["stride"] == (block.stride, block.stride)
    layers = []
    zoo.apply(layers.append)
    assert all(layer.bias is None for layer in layers if isinstance(layer, nn.Conv2D))
    batch_norms = [layer for layer in layers if isinstance(layer, nn.BatchNorm)]
    assert len(batch_norms) == sum(canonical.endswith("running_var") for canonical in shapes)
    assert all(layer._kwargs["eps"] == BN_EPSILON for layer in batch_norms)

    # The function: the zoo's logits are the oracle's and resnet_mx's, in evaluation and in training mode.
    images, _ = oracle.step_batch(seed=5, batch_size=4, size=64, in_channels=3)
    net = mx_backend.resnet(name, num_classes=classes, in_channels=3, style="torchvision")
    start = disturbed_weights(spec, seed=12, in_channels=3, num_classes=classes)
    for mode in ("eval", "train", "record"):
        training = mode != "eval"
        weights = scaled_for_unit_logits(start, images, training=training, arch=spec)
        expected = oracle.forward(weights, images, training=training, arch=spec)
        assert 0.5 < np.std(expected) < 2.0
        load_into_zoo(zoo, weights, names)
        theirs = zoo_logits(zoo, images, mode)
        np.testing.assert_allclose(theirs, expected, rtol=0, atol=1e-4, err_msg=f"zoo, {mode}")
        mx_backend.import_weights(net, weights)
        ours = mx_backend.forward(net, images, training=training)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4, err_msg=f"resnet_mx, {mode}")
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4, err_msg=f"resnet_mx and zoo, {mode}")
