"""An outside check of the "torchvision" style: MXNet's own model zoo (``mxnet.gluon.model_zoo.vision``).

Gluon's ``resnet18_v1`` and ``resnet34_v1``, written by MXNet's authors and not by us, have torchvision's
basic-block layout: bias-free convolutions, the stride on the block's first 3 x 3 convolution, a 1 x 1
convolution plus BatchNorm on the shortcut, BatchNorm epsilon 1e-5. Given our canonical "torchvision"-style
weights through a name map (:func:`zoo_to_canonical`), a zoo network must give the oracle's logits and
resnet_mx's, in evaluation mode and in training mode (batch statistics; the zoo's BatchNorm moves its
running statistics its own way, so only logits are compared). Built on the CPU, nothing downloaded.

:func:`common.gluon_zoo.export_gluon` writes such weights as a file the zoo's own ``load_parameters`` reads
into ``vision.resnet18_v1(classes=10)`` / ``resnet34_v1`` (one input channel, which the zoo's first
convolution takes from the file): the zoo then gives resnet_mx's logits within 1e-5 of the largest, in both
modes; every other network is refused in one line, and so is an export where MXNet does not import.

The inputs are 64 x 64: in training mode a deeper network on smaller maps (32 x 32, layer4 on 1 x 1 maps,
4 values per BatchNorm channel) depends on float32 rounding by more than the 1e-4 bound (the oracle's own
logits move by 4e-4 under a 1e-6 relative jitter of the weights); at 64 x 64 by 5e-5 or less.
"""
import sys

import numpy as np
import pytest

from common import oracle
from common.gluon_zoo import GluonZooError, export_gluon, zoo_to_canonical
from common.naming import parameter_shapes
from common.spec import BN_EPSILON, get_spec, iter_blocks

from helpers import disturbed_weights, scaled_for_unit_logits

pytestmark = pytest.mark.backend("mx")

#: (zoo builder, classes): both depths the zoo builds with basic blocks, both class counts.
CASES = [("resnet18", 1000), ("resnet34", 10)]


@pytest.fixture(scope="module")
def mx_backend(backend):
    return backend


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


def _exported_zoo(tmp_path, name, weights, spec, filename):
    """``weights`` through :func:`export_gluon` into a fresh ``vision.<name>_v1(classes=10)`` by Gluon's own
    ``load_parameters`` (strict: no parameter missing, none extra)."""
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    path = tmp_path / filename
    export_gluon(weights, spec, path, metadata={"train_state": {"epoch": 1}})
    assert sorted(mx.nd.load(str(path))) == sorted(zoo_to_canonical(spec))  # the structural names, nothing else
    zoo = getattr(vision, f"{name}_v1")(classes=10)
    zoo.load_parameters(str(path))
    return zoo


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_export_gluon_loads_into_the_zoo(mx_backend, tmp_path, name):
    spec = get_spec(name, "torchvision")
    images, _ = oracle.step_batch(seed=7, batch_size=4, size=64, in_channels=1)
    net = mx_backend.resnet(name, num_classes=10, in_channels=1, style="torchvision")
    start = disturbed_weights(spec, seed=3, in_channels=1, num_classes=10)
    for mode in ("eval", "train"):
        training = mode == "train"
        weights = scaled_for_unit_logits(start, images, training=training, arch=spec)
        zoo = _exported_zoo(tmp_path, name, weights, spec, f"{mode}.params")
        theirs = zoo_logits(zoo, images, mode)
        mx_backend.import_weights(net, weights)
        ours = mx_backend.forward(net, images, training=training)
        assert 0.5 < np.std(ours) < 2.0
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.max(np.abs(ours)), err_msg=mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.params", "train.params"]  # no temporary left


REFUSED = [("resnet50", "torchvision", "imagenet", "stride on the first 1 x 1"),
           ("resnext50_32x4d", "torchvision", "imagenet", "no ResNeXt"),
           ("((1, 16), (1, 32))", "torchvision", "imagenet", "no other depth"),
           ("resnet18", "d2l", "imagenet", "--style torchvision"),
           ("resnet34", "preact", "imagenet", "--style torchvision"),
           ("resnet18", "torchvision", "small", "imagenet stem")]


@pytest.mark.parametrize("arch, style, stem, why", REFUSED, ids=[f"{a}-{s}-{t}" for a, s, t, _ in REFUSED])
def test_export_gluon_refuses_what_the_zoo_has_not(tmp_path, arch, style, stem, why):
    spec = get_spec(arch, style, stem)
    weights = disturbed_weights(spec, in_channels=1, num_classes=10)
    with pytest.raises(GluonZooError) as error:
        export_gluon(weights, spec, tmp_path / "model.params")
    message = str(error.value)
    assert "\n" not in message and spec.label in message and why in message
    assert "resnet18_v1, resnet34_v1" in message and "--format onnx" in message
    assert list(tmp_path.iterdir()) == []


def test_export_gluon_without_mxnet_says_what_to_install(tmp_path, monkeypatch):
    spec = get_spec("resnet18", "torchvision")
    weights = disturbed_weights(spec, in_channels=1, num_classes=10)
    monkeypatch.setitem(sys.modules, "mxnet", None)  # `import mxnet` raises ImportError
    with pytest.raises(GluonZooError, match=r"needs mxnet.*pip install mxnet==1\.9\.1") as error:
        export_gluon(weights, spec, tmp_path / "model.params")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_export_gluon_writes_nothing_when_it_fails(mx_backend, tmp_path, monkeypatch):
    import mxnet as mx

    spec = get_spec("resnet18", "torchvision")
    weights = disturbed_weights(spec, in_channels=1, num_classes=10)
    bad = dict(weights, **{"layer1.0.bn1.weight": np.full(64, np.nan, np.float32)})
    with pytest.raises(ValueError, match="layer1.0.bn1.weight"):
        export_gluon(bad, spec, tmp_path / "model.params")

    def save_part_then_fail(fname, data):
        with open(fname, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(mx.nd, "save", save_part_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_gluon(weights, spec, tmp_path / "model.params")
    assert list(tmp_path.iterdir()) == []
