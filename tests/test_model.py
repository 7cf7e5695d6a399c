"""The model in every backend: the chapter's shapes, the spec's counts, the oracle's numbers."""
import numpy as np
import pytest

from common import oracle
from common.naming import count_parameters, parameter_shapes
from common.spec import stage_output_shapes
from common.weights import WeightsError, init_weights

from helpers import disturbed_weights, load_expected, scaled_for_unit_logits


@pytest.fixture(scope="module", params=[64, 28], ids=["64px", "28px"])
def case(request):
    # 28 x 28 leaves layer4 with 1 x 1 feature maps, where backends may take special paths.
    rng = np.random.default_rng(7)
    images = rng.uniform(0.0, 1.0, (4, 1, request.param, request.param)).astype(np.float32)
    weights = scaled_for_unit_logits(disturbed_weights(), images)
    return weights, images


@pytest.fixture(params=[False, True], ids=["kernels", "plain"])
def plain(request):
    """Build networks with the backend's fast kernels, and with the framework's own layers only."""
    return request.param


# --- the chapter's checks -------------------------------------------------------------

def test_residual_keeps_shape(chapter):
    assert chapter.residual_output_shape(3, 3, False, 1, (4, 3, 6, 6)) == (4, 3, 6, 6)


def test_residual_with_1x1conv_halves_and_widens(chapter):
    assert chapter.residual_output_shape(3, 6, True, 2, (4, 3, 6, 6)) == (4, 6, 3, 3)


def test_chapter_network_layer_shapes(chapter):
    # The chapter builds ResNet-18 from Residual/resnet_block itself and prints each layer.
    shapes = chapter.chapter_net_output_shapes((1, 1, 224, 224))
    expected = [(1,) + shape for _, shape in stage_output_shapes("resnet18", 1, 224, 224)]
    assert shapes == expected


def test_resnet18_stage_shapes(backend):
    net = backend.resnet18()
    traced = backend.trace_shapes(net, np.zeros((1, 1, 224, 224), np.float32))
    expected = [(name, (1,) + shape) for name, shape in stage_output_shapes("resnet18", 1, 224, 224)]
    assert traced == expected


def test_resnet18_other_channels_and_classes(backend):
    net = backend.resnet18(num_classes=7, in_channels=3)
    logits = backend.forward(net, np.zeros((2, 3, 32, 32), np.float32))
    assert logits.shape == (2, 7)
    assert backend.count_parameters(net) == count_parameters("resnet18", 3, 7)


# --- the spec's numbers ----------------------------------------------------------------

def test_trainable_parameter_count(backend):
    assert count_parameters("resnet18", 1, 10) == 11_178_378
    assert backend.count_parameters(backend.resnet18()) == 11_178_378


def test_export_names_and_shapes_are_canonical(backend):
    exported = backend.export_weights(backend.resnet18())
    expected = parameter_shapes("resnet18", 1, 10)
    assert list(exported) == list(expected)
    assert {k: v.shape for k, v in exported.items()} == expected
    assert all(v.dtype == np.float32 for v in exported.values())


def test_export_import_round_trip_is_exact(backend, case):
    weights, _ = case
    net = backend.resnet18()
    backend.import_weights(net, weights)
    exported = backend.export_weights(net)
    for name, value in weights.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    # and through a second network: nothing hides in the first one's state
    other = backend.resnet18()
    backend.import_weights(other, exported)
    for name, value in backend.export_weights(other).items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_import_refuses_wrong_weights(backend, case):
    weights, _ = case
    net = backend.resnet18()
    bad = dict(weights)
    bad["layer1.0.conv1.weight"] = bad["layer1.0.conv1.weight"][:, :32]
    with pytest.raises(WeightsError, match="layer1.0.conv1.weight"):
        backend.import_weights(net, bad)
    missing = dict(weights)
    del missing["fc.bias"]
    with pytest.raises(WeightsError, match="fc.bias"):
        backend.import_weights(net, missing)


# --- the oracle's numbers --------------------------------------------------------------

def test_eval_logits_match_oracle(backend, plain, case):
    weights, images = case
    net = backend.resnet18(plain=plain)
    backend.import_weights(net, weights)
    expected = oracle.forward(weights, images, training=False)
    assert 0.5 < np.std(expected) < 2.0  # logits of order 1: the tolerance means something
    np.testing.assert_allclose(backend.forward(net, images, training=False), expected, rtol=0, atol=1e-4)


def test_train_logits_and_running_statistics_match_oracle(backend, plain, case):
    weights, images = case
    weights = scaled_for_unit_logits(weights, images, training=True)
    net = backend.resnet18(plain=plain)
    backend.import_weights(net, weights)
    expected_logits, expected_state = oracle.forward(weights, images, training=True, return_state=True)
    assert 0.5 < np.std(expected_logits) < 2.0
    logits = backend.forward(net, images, training=True)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
    exported = backend.export_weights(net)
    for name, value in expected_state.items():
        assert not np.allclose(value, weights[name]), f"{name}: running statistic did not move"
        np.testing.assert_allclose(exported[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    # the forward pass in training mode changes running statistics and nothing else
    for name, value in weights.items():
        if name not in expected_state:
            np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_eval_mode_leaves_running_statistics_alone(backend, plain, case):
    weights, images = case
    net = backend.resnet18(plain=plain)
    backend.import_weights(net, weights)
    backend.forward(net, images, training=False)
    for name, value in backend.export_weights(net).items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_nan_input_gives_nan_logits_as_the_oracle(backend, plain, training):
    # One NaN pixel: its example's logits are NaN in evaluation mode, every example's in
    # training mode (the batch statistics mix them); a backend must not turn it into numbers.
    weights = init_weights("resnet18", 0)
    images = np.random.default_rng(3).uniform(0, 1, (4, 1, 32, 32)).astype(np.float32)
    images[1, 0, 5, 7] = np.nan
    expected = np.isnan(oracle.forward(weights, images, training=training))
    assert expected.all(axis=1).tolist() == ([True] * 4 if training else [False, True, False, False])
    net = backend.resnet18(plain=plain)
    backend.import_weights(net, weights)
    np.testing.assert_array_equal(np.isnan(backend.forward(net, images, training=training)), expected)


# --- the one canonical-name mapping ---------------------------------------------------

@pytest.mark.filterwarnings("ignore:All children of this Sequential")  # Gluon's advice on the chapter's nn.Sequential
@pytest.mark.parametrize("book", [False, True], ids=["chapter", "book"])
def test_the_chapters_networks_take_canonical_weights(backend, chapter, book):
    # The chapter's Sequential of this Residual and the book's own code (its shortcut named conv3)
    # map to the canonical names by the same mechanism as ResNet; where they compute the
    # oracle's function, the imported weights give its logits.
    weights = disturbed_weights()
    net = chapter.built_net(book=book)
    backend.import_weights(net, weights)
    exported = backend.export_weights(net)
    assert list(exported) == list(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    if not chapter.COMPUTES_THE_ORACLES_FUNCTION:
        return
    images = np.random.default_rng(5).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    weights = scaled_for_unit_logits(weights, images)
    backend.import_weights(net, weights)
    np.testing.assert_allclose(backend.forward(net, images), oracle.forward(weights, images), rtol=0, atol=1e-4)


# --- one training step, the same in every backend ----------------------------------------

def test_one_training_step_matches_expected(backend, plain):
    expected = load_expected()["one_step"]
    images, labels = oracle.step_batch(**expected["batch"])
    net = backend.resnet18(plain=plain)
    backend.import_weights(net, init_weights("resnet18", expected["seed"]))
    loss, gradients = backend.loss_and_gradients(net, images, labels)
    assert loss == pytest.approx(expected["loss"], rel=1e-4)
    norms = {name: float(np.linalg.norm(g)) for name, g in gradients.items()}
    assert sorted(norms) == sorted(expected["gradient_norms"])
    total = expected["total_gradient_norm"]
    for name, want in expected["gradient_norms"].items():
        if name in expected["near_zero"]:
            # A conv bias feeding a train-mode BatchNorm has a gradient that is zero up to
            # rounding: only its size relative to the whole gradient means anything.
            assert norms[name] <= 1e-4 * total, name
        else:
            assert norms[name] == pytest.approx(want, rel=1e-4), name


# --- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("shape, words", [
    ((28, 28), "rank"),
    ((2, 28, 28), "rank"),
    ((2, 3, 28, 28), "channel"),
])
def test_forward_rejects_bad_shapes(backend, shape, words):
    net = backend.resnet18()
    with pytest.raises(ValueError, match=words) as info:
        backend.forward(net, np.zeros(shape, np.float32))
    assert "expected" in str(info.value)


def test_network_rejects_wrong_layout(chapter):
    # An image batch in the other layout (NHWC given to an NCHW network or the reverse)
    # is refused by the network itself, with the expected shape in the message.
    with pytest.raises(ValueError, match="expected") as info:
        chapter.call_resnet18_with_other_layout((2, 1, 28, 28))
    assert "channel" in str(info.value)


def test_plain_networks_use_no_kernels(backend):
    # RESNET_PLAIN_LAYERS / plain=True: the framework's own layers only; the default binds the
    # backend's fast paths in (tests above hold both to the oracle).
    assert backend.kernels.fast_layer_count(backend.resnet18(plain=True)) == 0
    assert backend.kernels.fast_layer_count(backend.resnet18(plain=False)) > 0
