"""The small-input stem (issue 23): a 3x3 convolution with stride 1, BatchNorm, ReLU and no max pool,
as one more axis of the spec (:data:`common.spec.STEMS`), in every architecture, style and backend.

The framework-free half pins the spec, the labels, the FLOPs (counted by hand), the map sizes, the
oracle's backward pass (finite differences) and the weights file; the backend half holds each
backend's network with the small stem to the oracle as tests/test_families.py holds the others.
"""

import numpy as np
import pytest

from common import oracle
from common.flops import forward_flops_per_example, training_flops_per_example
from common.naming import count_parameters, parameter_shapes
from common.spec import STEMS, STYLES, ResNetSpec, StageSpec, get_spec, iter_convs, stage_output_shapes
from common.weights import (
    WeightsError,
    init_weights,
    load_weights,
    read_architecture,
    read_spec,
    save_weights,
)
from test_families import assert_matches_the_oracle

from helpers import disturbed_weights

# --- the spec ------------------------------------------------------------------------------------


def test_stems_and_their_fields():
    assert STEMS == ("imagenet", "small")
    small, imagenet = get_spec("resnet18", stem="small"), get_spec("resnet18")
    assert (small.stem, small.stem_kernel, small.stem_stride, small.stem_padding, small.max_pool) == (
        "small", 3, 1, 1, False)
    # the default is the chapter's stem, unchanged
    assert (imagenet.stem, imagenet.stem_kernel, imagenet.stem_stride, imagenet.stem_padding, imagenet.max_pool) == (
        "imagenet", 7, 2, 3, True)
    assert (imagenet.pool_kernel, imagenet.pool_stride, imagenet.pool_padding) == (3, 2, 1)
    assert get_spec("resnet18", stem="imagenet") == imagenet == get_spec("resnet18", "d2l")
    # the rest of the network is the same
    assert (small.stages, small.block, small.style, small.stem_channels) == (
        imagenet.stages, imagenet.block, imagenet.style, imagenet.stem_channels)


def test_get_spec_keeps_or_sets_the_stem():
    small = get_spec("resnet50", "torchvision", "small")
    assert get_spec(small) == small  # a spec passed in keeps its own stem ...
    assert get_spec(small, "preact") == get_spec("resnet50", "preact", "small")  # ... and with another style
    assert get_spec(small, stem="imagenet") == get_spec("resnet50", "torchvision")
    assert get_spec(get_spec("resnet50"), stem="small") == get_spec("resnet50", stem="small")
    # the book's arch tuple, as a tuple and as its text
    book = ((2, 64), (2, 128), (2, 256), (2, 512))
    assert get_spec(book, stem="small") == get_spec("resnet18", stem="small")
    custom = get_spec("((1, 16), (1, 32))", "preact", "small")
    assert (custom.stem, custom.style, custom.stem_kernel, custom.max_pool) == ("small", "preact", 3, False)
    assert get_spec(custom.name, custom.style, custom.stem) == custom  # reads back from name, style and stem


@pytest.mark.parametrize("arch, style, stem, label", [
    ("resnet18", None, None, "resnet18"),
    ("resnet18", "d2l", "imagenet", "resnet18"),
    ("resnet18", None, "small", "resnet18 (stem small)"),
    ("resnet50", "torchvision", None, "resnet50 (style torchvision)"),
    ("resnet50", "torchvision", "small", "resnet50 (style torchvision, stem small)"),
    ("((1, 16), (1, 32))", "preact", "small", "((1, 16), (1, 32)) (style preact, stem small)"),
])
def test_labels_name_a_small_stem(arch, style, stem, label):
    assert get_spec(arch, style, stem).label == label


def test_an_unknown_stem_is_a_one_line_error():
    for make in (lambda: get_spec("resnet18", stem="cifar"), lambda: get_spec(get_spec("resnet18"), "d2l", "cifar"),
                 lambda: ResNetSpec(name="x", block="basic", stages=(StageSpec(8, 1, 1),), stem="cifar")):
        with pytest.raises(ValueError, match=r"^unknown stem 'cifar'; known: imagenet, small$"):
            make()


def test_only_conv1_changes_shape():
    for style in STYLES:
        small, imagenet = parameter_shapes(get_spec("resnet18", style, "small")), parameter_shapes(
            get_spec("resnet18", style))
        assert small["conv1.weight"] == (64, 1, 3, 3) and imagenet["conv1.weight"] == (64, 1, 7, 7)
        assert list(small) == list(imagenet)
        assert {k: v for k, v in small.items() if k != "conv1.weight"} == {
            k: v for k, v in imagenet.items() if k != "conv1.weight"}
    assert count_parameters("resnet18") - count_parameters(get_spec("resnet18", stem="small")) == 64 * (49 - 9)
    assert parameter_shapes(get_spec("resnet50", "torchvision", "small"), 3, 1000)["conv1.weight"] == (64, 3, 3, 3)


# --- map sizes and FLOPs -------------------------------------------------------------------------

def test_stage_output_shapes_at_28_pixels():
    assert stage_output_shapes(get_spec("resnet18", stem="small"), 1, 28, 28) == [
        ("stem", (64, 28, 28)), ("layer1", (64, 28, 28)), ("layer2", (128, 14, 14)), ("layer3", (256, 7, 7)),
        ("layer4", (512, 4, 4)), ("pool", (512,)), ("fc", (10,))]
    # the imagenet stem: a quarter per side at stage 1
    assert stage_output_shapes("resnet18", 1, 28, 28)[:2] == [("stem", (64, 7, 7)), ("layer1", (64, 7, 7))]
    assert stage_output_shapes(get_spec("resnet50", "preact", "small"), 1, 12, 12)[1:5] == [
        ("layer1", (256, 12, 12)), ("layer2", (512, 6, 6)), ("layer3", (1024, 3, 3)), ("layer4", (2048, 2, 2))]


def test_iter_convs_follow_the_stem():
    convs = {conv.name: (conv, size) for conv, size in iter_convs(get_spec("resnet18", stem="small"), 1, 28, 28)}
    conv1, size = convs["conv1"]
    assert (conv1.kernel, conv1.stride, conv1.padding, size) == (3, 1, 1, (28, 28))
    assert convs["layer1.0.conv1"][1] == (28, 28)  # no max pool between the stem and layer1
    assert convs["layer2.0.downsample.0"][1] == (28, 28)
    assert convs["layer4.1.conv2"][1] == (4, 4)


def _conv_flops(in_channels, out_channels, kernel, out_size):
    return 2 * in_channels * out_channels * kernel * kernel * out_size * out_size


def test_flops_of_the_small_stem_by_hand():
    # ResNet-18 at 28 x 28, small stem: the stem's 3x3 convolution and layer1 at 28, layer2 at 14,
    # layer3 at 7, layer4 at 4; each later stage: a strided 3x3, three 3x3 and a 1x1 shortcut.
    def stage(in_channels, channels, size):
        return (_conv_flops(in_channels, channels, 3, size) + 3 * _conv_flops(channels, channels, 3, size)
                + _conv_flops(in_channels, channels, 1, size))
    by_hand = (_conv_flops(1, 64, 3, 28) + 4 * _conv_flops(64, 64, 3, 28) + stage(64, 128, 14) + stage(128, 256, 7)
               + stage(256, 512, 4) + 2 * 512 * 10)
    small = get_spec("resnet18", stem="small")
    assert by_hand == 911_601_664
    assert forward_flops_per_example(small, 1, 28, 28) == by_hand
    assert training_flops_per_example(small, 1, 28, 28) == 3 * by_hand
    # the imagenet stem at 28 x 28: a 7x7/2 convolution to 14, the max pool to 7, then 7, 4, 2, 1
    imagenet = (_conv_flops(1, 64, 7, 14) + 4 * _conv_flops(64, 64, 3, 7) + stage(64, 128, 4) + stage(128, 256, 2)
                + stage(256, 512, 1) + 2 * 512 * 10)
    assert forward_flops_per_example("resnet18", 1, 28, 28) == imagenet == 66_021_888


# --- the oracle ----------------------------------------------------------------------------------

#: ResNet-18's layout with few channels and the small stem: finite differences are cheap.
NARROW_SMALL = get_spec(ResNetSpec(name="narrow-resnet18", block="basic", stem_channels=8,
                                   stages=(StageSpec(8, 2, 1), StageSpec(12, 2, 2), StageSpec(16, 1, 2))),
                        stem="small")


def test_the_oracles_small_stem_matches_central_differences():
    rng = np.random.default_rng(23)
    images, labels = rng.uniform(0.0, 1.0, (2, 1, 12, 12)), np.array([3, 7])
    weights = disturbed_weights(NARROW_SMALL, dtype=np.float64)
    loss, gradients = oracle.loss_and_gradients(weights, images, labels, arch=NARROW_SMALL)

    def loss_at(name, index, delta):
        moved = dict(weights)
        moved[name] = weights[name].copy()
        moved[name][index] += delta
        logits = oracle.forward(moved, images, training=True, arch=NARROW_SMALL)
        return oracle.softmax_cross_entropy(logits, labels)[0]

    assert loss == pytest.approx(loss_at("fc.bias", 0, 0.0), rel=1e-14)
    for name in ("conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight"):
        gradient = gradients[name]
        rng_pick = np.random.default_rng(len(name))
        picks = [np.unravel_index(np.argmax(np.abs(gradient)), gradient.shape)]
        picks += [tuple(int(rng_pick.integers(0, d)) for d in gradient.shape)]
        for index in picks:
            numeric = (loss_at(name, index, 1e-7) - loss_at(name, index, -1e-7)) / 2e-7
            assert gradient[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, index)


def test_the_oracle_runs_no_max_pool_for_the_small_stem(monkeypatch):
    weights = init_weights(NARROW_SMALL, 0)
    images = np.random.default_rng(1).uniform(0, 1, (2, 1, 12, 12))
    monkeypatch.setattr(oracle, "max_pool2d", lambda *args: pytest.fail("max pool called for the small stem"))
    oracle.loss_and_gradients(weights, images, np.array([1, 2]), arch=NARROW_SMALL)


# --- the weights file ----------------------------------------------------------------------------

def test_the_weights_file_records_the_stem(tmp_path):
    small = get_spec("resnet50", "torchvision", "small")
    weights = init_weights(small, seed=3)
    assert weights["conv1.weight"].shape == (64, 1, 3, 3)
    path = tmp_path / "small.npz"
    save_weights(path, weights, small)
    assert read_spec(path) == small
    assert read_architecture(path) == ("resnet50", "torchvision")  # as before: (arch, style)
    for name, value in load_weights(path, small).items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    # the other stem is refused in one line naming the flag
    with pytest.raises(WeightsError, match=r"holds weights for resnet50 \(style torchvision, stem small\), not "
                                           r"resnet50 \(style torchvision, stem imagenet\); pass --arch resnet50 "
                                           r"--style torchvision --stem small$") as info:
        load_weights(path, get_spec("resnet50", "torchvision"))
    assert "\n" not in str(info.value)
    imagenet = tmp_path / "imagenet.npz"
    save_weights(imagenet, init_weights("resnet18"), "resnet18")
    with pytest.raises(WeightsError, match=r"--stem imagenet$"):
        load_weights(imagenet, get_spec("resnet18", stem="small"))
    assert read_spec(imagenet) == get_spec("resnet18")


def test_a_file_from_before_stems_is_imagenet(tmp_path):
    path = tmp_path / "old.npz"
    save_weights(path, init_weights("resnet18"), "resnet18")
    with np.load(path) as npz:
        assert "__stem__" in npz.files
        arrays = {key: npz[key] for key in npz.files if key != "__stem__"}
    old = tmp_path / "older.npz"
    np.savez(old, **arrays)
    assert read_spec(old) == get_spec("resnet18")
    load_weights(old, "resnet18")
    with pytest.raises(WeightsError, match="--stem imagenet"):
        load_weights(old, get_spec("resnet18", stem="small"))


# --- every backend: the same function as the oracle ----------------------------------------------

#: (arch, style, input size, batch): ResNet-18 in every style at Fashion-MNIST's 28 x 28, and a
#: bottleneck network at 12 x 12, where layer4's 2 x 2 maps take the backends' tiny-map fast paths
#: (whose map sizes come from the spec: common.spec.iter_convs), on 8 images as in
#: tests/test_families.py (on 4, some BatchNorm gradient norms of MXNet's and TensorFlow's drift
#: by 1e-4 to 1e-3 relative at these map sizes, with either stem: float32 rounding, not the stem).
BACKEND_CASES = [("resnet18", style, 28, 4) for style in STYLES] + [("resnet50", "preact", 12, 8)]


@pytest.fixture(scope="module", params=BACKEND_CASES, ids=lambda case: f"{case[0]}-{case[1]}-{case[2]}px")
def stem_case(request):
    arch, style, size, batch = request.param
    spec = get_spec(arch, style, "small")
    images, labels = oracle.step_batch(seed=23, batch_size=batch, size=size)
    return spec, images, labels


def _stem_max_pool(backend_name, net):
    """The network's ``maxpool`` layer (None: none), in jax from the module bound to its variables."""
    return (net.module.bind(net.variables) if backend_name == "jax" else net).maxpool


def test_small_stem_networks_match_the_oracle(backend_name, backend, stem_case, plain=None):
    """The network is the spec's (architecture, names, shapes, map sizes, no max pool layer); its
    eval and train logits, running statistics, loss and gradient norms are the oracle's, within
    tests/test_families.py's bounds."""
    spec, images, labels = stem_case
    net = backend.resnet(spec, style=spec.style, plain=plain)
    assert backend.architecture(net)[0] == spec
    assert _stem_max_pool(backend_name, net) is None
    assert _stem_max_pool(backend_name, backend.resnet(spec.name, style=spec.style, plain=plain)) is not None
    assert backend.count_parameters(net) == count_parameters(spec)
    exported = backend.export_weights(net)
    assert {name: value.shape for name, value in exported.items()} == parameter_shapes(spec)
    size = images.shape[-1]
    assert backend.trace_shapes(net, images[:1]) == [
        (name, (1,) + shape) for name, shape in stage_output_shapes(spec, 1, size, size)]
    assert_matches_the_oracle(backend, net, spec, images, labels)


def test_small_stem_with_plain_layers(backend_name, backend):
    """The framework's own layers (plain=True) too, ResNet-18 at 28 x 28."""
    spec = get_spec("resnet18", "d2l", "small")
    images, labels = oracle.step_batch(seed=23, batch_size=4, size=28)
    test_small_stem_networks_match_the_oracle(backend_name, backend, (spec, images, labels), plain=True)
