"""The NumPy oracle checked on its own terms, with no framework: every backend is compared
against it, so it is proved right here independently (finite differences, direct
definitions of each layer, PyTorch's BatchNorm conventions written out by hand)."""
from dataclasses import replace

import numpy as np
import pytest

from common import oracle
from common.naming import is_buffer, parameter_shapes, trainable_parameter_names
from common.spec import BN_EPSILON, BN_MOMENTUM, STYLES, ResNetSpec, StageSpec, iter_blocks
from common.weights import init_weights

from helpers import disturbed_weights

#: ResNet-18's layout and names with few channels: the same code paths as the real network
#: (stem, identity and 1x1-conv shortcuts, head) at a fraction of the cost, which matters for
#: finite differences. The full ResNet-18 is checked by the tests that name it.
NARROW = ResNetSpec(
    name="narrow-resnet18",
    block="basic",
    stages=(StageSpec(8, 2, 1), StageSpec(12, 2, 2), StageSpec(16, 2, 2), StageSpec(20, 2, 2)),
    stem_channels=8,
)


@pytest.fixture(scope="module")
def small_case():
    # 64 x 64 leaves 2 x 2 pixels in layer4, so every BatchNorm sees 8 values per channel.
    rng = np.random.default_rng(11)
    images = rng.uniform(0.0, 1.0, (2, 1, 64, 64))
    labels = np.array([3, 7])
    return disturbed_weights(NARROW, dtype=np.float64), images, labels


@pytest.fixture(scope="module")
def small_gradients(small_case):
    weights, images, labels = small_case
    return oracle.loss_and_gradients(weights, images, labels, arch=NARROW)


@pytest.fixture(scope="module")
def resnet18_gradients(small_case):
    _, images, labels = small_case
    return oracle.loss_and_gradients(disturbed_weights(dtype=np.float64), images, labels)


# --- layers against their direct definitions -------------------------------------------------

def direct_conv2d(x, weight, bias, stride, padding):
    """The textbook sum, one output pixel at a time."""
    n, channels, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    out = np.zeros((n, out_channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, weight) + bias
    return out


@pytest.mark.parametrize("kernel, stride, padding, size", [(7, 2, 3, 11), (3, 1, 1, 6), (3, 2, 1, 7), (1, 2, 0, 6)])
def test_conv2d_matches_direct_sum(rng, kernel, stride, padding, size):
    x = rng.normal(size=(2, 3, size, size))
    weight = rng.normal(size=(4, 3, kernel, kernel))
    bias = rng.normal(size=4)
    out, _ = oracle.conv2d(x, weight, bias, stride, padding)
    np.testing.assert_allclose(out, direct_conv2d(x, weight, bias, stride, padding), rtol=1e-12, atol=1e-12)


def test_max_pool_pads_with_minus_infinity(rng):
    # All inputs negative: zero padding would put zeros on the border, -inf padding never wins.
    x = -rng.uniform(1.0, 2.0, (2, 3, 6, 7))
    out, _ = oracle.max_pool2d(x, 3, 2, 1)
    assert out.shape == (2, 3, 3, 4)
    assert np.all(out < 0)
    np.testing.assert_array_equal(out[:, :, 0, 0], x[:, :, :2, :2].max(axis=(2, 3)))
    np.testing.assert_array_equal(out[:, :, 2, 3], x[:, :, 3:6, 5:7].max(axis=(2, 3)))


def test_max_pool_backward_sends_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 3, 3))  # one window, all tied
    out, cache = oracle.max_pool2d(x, 3, 2, 1)
    d_x = oracle.max_pool2d_backward(np.ones_like(out), cache)
    assert out.shape == (1, 1, 2, 2)
    # Each of the four windows (rows/columns 0-1 and 1-2 once the -inf padding is left out)
    # picks its first real element, as PyTorch does.
    np.testing.assert_array_equal(d_x[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_batch_norm_train_statistics_and_running_update(rng):
    x = rng.normal(2.0, 3.0, (4, 5, 3, 2))
    gamma, beta = rng.uniform(0.5, 1.5, 5), rng.normal(size=5)
    running_mean, running_var = rng.normal(size=5), rng.uniform(0.5, 2.0, 5)
    out, _, mean, unbiased = oracle.batch_norm_train(x, gamma, beta)
    per_channel = x.transpose(1, 0, 2, 3).reshape(5, -1)
    expected = ((x - per_channel.mean(1)[None, :, None, None])
                / np.sqrt(per_channel.var(1) + BN_EPSILON)[None, :, None, None])
    np.testing.assert_allclose(out, expected * gamma[None, :, None, None] + beta[None, :, None, None], rtol=1e-12)
    new_mean, new_var = oracle.update_running_statistics(running_mean, running_var, mean, unbiased)
    # PyTorch: momentum 0.1 on the new value, and the *unbiased* variance (ddof=1) for the running one.
    np.testing.assert_allclose(new_mean, 0.9 * running_mean + 0.1 * per_channel.mean(1), rtol=1e-12)
    np.testing.assert_allclose(new_var, 0.9 * running_var + 0.1 * per_channel.var(1, ddof=1), rtol=1e-12)
    assert BN_MOMENTUM == 0.1


def test_batch_norm_refuses_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        oracle.batch_norm_train(np.zeros((1, 2, 1, 1)), np.ones(2), np.zeros(2))


def test_softmax_cross_entropy_is_the_mean_negative_log_likelihood(rng):
    logits = rng.normal(size=(5, 4)) * 30  # large: the stable form must not overflow
    labels = np.array([0, 3, 1, 1, 2])
    loss, d_logits = oracle.softmax_cross_entropy(logits, labels)
    shifted = logits - logits.max(1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probabilities[np.arange(5), labels])), rel=1e-12)
    np.testing.assert_allclose(d_logits, (probabilities - np.eye(4)[labels]) / 5, atol=1e-15)


# --- the network ----------------------------------------------------------------------------

def test_output_shape_for_other_channels_and_classes(rng):
    weights = init_weights("resnet18", 0, in_channels=3, num_classes=7)
    images = rng.uniform(size=(2, 3, 32, 32))
    assert oracle.forward(weights, images).shape == (2, 7)
    logits, state = oracle.forward(weights, images, training=True, return_state=True)
    assert logits.shape == (2, 7) and logits.dtype == np.float64
    assert sorted(state) == sorted(name for name in weights if is_buffer(name))


def test_stem_running_statistics_after_a_train_forward(small_case):
    weights, images, _ = small_case
    _, state = oracle.forward(weights, images, training=True, return_state=True, arch=NARROW)
    stem = direct_conv2d(images, weights["conv1.weight"], weights["conv1.bias"], 2, 3)
    values = stem.transpose(1, 0, 2, 3).reshape(stem.shape[1], -1)
    np.testing.assert_allclose(state["bn1.running_mean"], 0.9 * weights["bn1.running_mean"] + 0.1 * values.mean(1),
                               rtol=1e-10)
    np.testing.assert_allclose(state["bn1.running_var"], 0.9 * weights["bn1.running_var"] + 0.1 * values.var(1, ddof=1),
                               rtol=1e-10)


def test_eval_and_train_modes_differ_and_eval_keeps_running_statistics(small_case):
    weights, images, _ = small_case
    before = {name: value.copy() for name, value in weights.items()}
    eval_logits, eval_state = oracle.forward(weights, images, training=False, return_state=True, arch=NARROW)
    train_logits, train_state = oracle.forward(weights, images, training=True, return_state=True, arch=NARROW)
    assert np.abs(eval_logits - train_logits).max() > 0.1
    for name, value in eval_state.items():
        np.testing.assert_array_equal(value, weights[name])
        assert not np.allclose(train_state[name], weights[name]), name
    for name, value in before.items():  # the caller's weights are never changed in place
        np.testing.assert_array_equal(weights[name], value)


def test_gradient_keys_are_the_trainable_parameters_in_order(resnet18_gradients):
    _, gradients = resnet18_gradients
    assert list(gradients) == trainable_parameter_names("resnet18")
    shapes = parameter_shapes("resnet18")
    assert all(g.shape == shapes[name] and g.dtype == np.float64 for name, g in gradients.items())


def train_loss(weights, images, labels):
    logits = oracle.forward(weights, images, training=True, arch=NARROW)
    return oracle.softmax_cross_entropy(logits, labels)[0]


FINITE_DIFFERENCE_TENSORS = [
    "conv1.weight",
    "bn1.weight",
    "layer1.0.conv1.weight",
    "layer1.1.bn2.bias",
    "layer2.0.downsample.0.weight",
    "layer3.0.downsample.0.bias",
    "layer3.1.bn1.weight",
    "layer4.1.conv2.weight",
    "layer4.1.conv2.bias",  # feeds a BatchNorm: zero both ways
    "fc.weight",
    "fc.bias",
]


@pytest.mark.parametrize("name", FINITE_DIFFERENCE_TENSORS)
def test_gradient_matches_central_differences(small_case, small_gradients, name):
    weights, images, labels = small_case
    loss, gradients = small_gradients
    assert loss == pytest.approx(train_loss(weights, images, labels), rel=1e-14)
    gradient = gradients[name]
    # The largest entry, so the relative comparison means something, and two random ones.
    rng = np.random.default_rng(len(name))
    picks = [np.unravel_index(np.argmax(np.abs(gradient)), gradient.shape)]
    picks += [tuple(int(rng.integers(0, d)) for d in gradient.shape) for _ in range(2)]
    # A small step: ReLU and max-pool kinks near the point spoil larger ones, and float64
    # rounding (about 1e-16 / 1e-7 relative) stays far below the tolerance.
    step = 1e-7
    for index in picks:
        def loss_at(delta):
            moved = dict(weights)
            moved[name] = weights[name].copy()
            moved[name][index] += delta
            return train_loss(moved, images, labels)

        numeric = (loss_at(step) - loss_at(-step)) / (2 * step)
        assert gradient[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, index)


def test_conv_bias_before_batch_norm_has_zero_gradient(small_case, resnet18_gradients):
    _, gradients = resnet18_gradients
    names = oracle.batch_norm_fed_conv_biases("resnet18")
    assert len(names) == 1 + 2 * len(list(iter_blocks("resnet18")))
    assert "conv1.bias" in names and not any("downsample" in name for name in names)
    total = np.sqrt(sum(float(np.sum(g ** 2)) for g in gradients.values()))
    for name in names:
        assert np.abs(gradients[name]).max() <= 1e-12 * total, name
    # ... and the loss indeed does not move when such a bias does, while a shortcut bias matters.
    weights, images, labels = small_case
    for name, moves in [("layer2.1.conv1.bias", False), ("layer2.0.downsample.0.bias", True)]:
        moved = dict(weights)
        moved[name] = weights[name] + 0.5
        change = abs(train_loss(moved, images, labels) - train_loss(weights, images, labels))
        assert (change > 1e-6) == moves, name


def test_sgd_step_moves_parameters_and_running_statistics(small_case, small_gradients):
    weights, images, labels = small_case
    loss, gradients = small_gradients
    step_loss, new_weights = oracle.sgd_step(weights, images, labels, lr=0.05, arch=NARROW)
    _, state = oracle.forward(weights, images, training=True, return_state=True, arch=NARROW)
    assert step_loss == loss
    assert list(new_weights) == list(weights)
    for name, value in new_weights.items():
        assert value.dtype == np.float32
        expected = state[name] if is_buffer(name) else weights[name] - 0.05 * gradients[name]
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    assert train_loss(new_weights, images, labels) < loss


def test_step_batch_is_deterministic():
    images, labels = oracle.step_batch(seed=3, batch_size=5, size=12, in_channels=2, num_classes=4)
    assert images.shape == (5, 2, 12, 12) and images.dtype == np.float32
    assert labels.shape == (5,) and labels.dtype == np.int64
    assert 0.0 <= images.min() and images.max() <= 1.0 and 0 <= labels.min() and labels.max() < 4
    again = oracle.step_batch(seed=3, batch_size=5, size=12, in_channels=2, num_classes=4)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert not np.array_equal(images, oracle.step_batch(seed=4, batch_size=5, size=12, in_channels=2, num_classes=4)[0])


@pytest.mark.parametrize("shape, words", [((1, 64, 64), "rank"), ((2, 3, 64, 64), "channel"),
                                          ((2, 64, 64, 1), "channel")])
def test_bad_images_are_refused(small_case, shape, words):
    weights, _, _ = small_case
    with pytest.raises(ValueError, match=words):
        oracle.forward(weights, np.zeros(shape), arch=NARROW)


def test_bad_labels_are_refused(small_case):
    weights, images, _ = small_case
    with pytest.raises(ValueError, match="labels"):
        oracle.loss_and_gradients(weights, images, np.array([0, 10]), arch=NARROW)
    with pytest.raises(ValueError, match="labels"):
        oracle.loss_and_gradients(weights, images, np.array([0.0, 1.0]), arch=NARROW)


def test_weights_of_another_architecture_are_refused(small_case):
    weights, images, _ = small_case
    with pytest.raises(ValueError, match="conv1.weight"):
        oracle.forward(weights, images)  # narrow weights, full ResNet-18


# --- the exercises' blocks: bottleneck, grouped convolution, pre-activation, the styles ----------

def test_grouped_conv2d_is_one_convolution_per_group(rng):
    x = rng.normal(size=(2, 6, 7, 7))
    weight = rng.normal(size=(4, 3, 3, 3))  # 2 groups: 3 input channels -> 2 outputs each
    bias = rng.normal(size=4)
    out, cache = oracle.conv2d(x, weight, bias, 2, 1, groups=2)
    for g in range(2):
        np.testing.assert_allclose(out[:, 2 * g:2 * g + 2],
                                   direct_conv2d(x[:, 3 * g:3 * g + 3], weight[2 * g:2 * g + 2], bias[2 * g:2 * g + 2],
                                                 2, 1), rtol=1e-12, atol=1e-12)
    d_out = rng.normal(size=out.shape)
    d_x, d_weight, d_bias = oracle.conv2d_backward(d_out, cache)
    for g in range(2):  # each group's gradients are an ordinary convolution's
        _, group_cache = oracle.conv2d(x[:, 3 * g:3 * g + 3], weight[2 * g:2 * g + 2], bias[2 * g:2 * g + 2], 2, 1)
        dx_g, dw_g, db_g = oracle.conv2d_backward(d_out[:, 2 * g:2 * g + 2], group_cache)
        np.testing.assert_allclose(d_x[:, 3 * g:3 * g + 3], dx_g, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d_weight[2 * g:2 * g + 2], dw_g, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d_bias[2 * g:2 * g + 2], db_g, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        oracle.conv2d(x, weight, bias, 1, 1, groups=4)


#: Small bottleneck networks with grouped 3x3 convolutions (2 groups of 4 channels), and a basic
#: one, in every style: every block kind and shortcut the real networks have, at a size where
#: finite differences are cheap.
NARROW_BOTTLENECK = ResNetSpec(name="narrow-resnext", block="bottleneck", groups=2, width_per_group=64,
                               stages=(StageSpec(4, 1, 1), StageSpec(8, 2, 2)), stem_channels=8)
NARROW_FAMILY = [replace(NARROW_BOTTLENECK, style=style) for style in STYLES] + [replace(NARROW, style="preact"),
                                                                                 replace(NARROW, style="torchvision")]


def _family_case(spec):
    rng = np.random.default_rng(12)
    images = rng.uniform(0.0, 1.0, (2, 1, 32, 32))
    return disturbed_weights(spec, dtype=np.float64), images, np.array([3, 7])


@pytest.mark.parametrize("spec", NARROW_FAMILY, ids=lambda spec: f"{spec.name}-{spec.style}")
def test_every_block_kind_matches_central_differences(spec):
    weights, images, labels = _family_case(spec)
    assert parameter_shapes(spec)["layer1.0.conv2.weight" if spec.block == "bottleneck"
                                  else "layer1.0.conv1.weight"][1] \
        == (4 if spec.block == "bottleneck" else 8)  # the bottleneck's 3x3 convolution is grouped
    loss, gradients = oracle.loss_and_gradients(weights, images, labels, arch=spec)
    near_zero = oracle.batch_norm_fed_conv_biases(spec)
    total = np.sqrt(sum(float(np.sum(g ** 2)) for g in gradients.values()))

    def loss_at(name, index, delta):
        moved = dict(weights)
        moved[name] = weights[name].copy()
        moved[name][index] += delta
        logits = oracle.forward(moved, images, training=True, arch=spec)
        return oracle.softmax_cross_entropy(logits, labels)[0]

    for name, gradient in gradients.items():  # every trainable array, at its largest entry
        if name in near_zero:
            assert np.abs(gradient).max() <= 1e-12 * total, name
            continue
        index = np.unravel_index(np.argmax(np.abs(gradient)), gradient.shape)
        numeric = (loss_at(name, index, 1e-7) - loss_at(name, index, -1e-7)) / 2e-7
        assert gradient[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, index)
        if name.endswith(".bias") and not name.startswith("fc") and ".bn" not in name and "downsample.1" not in name:
            assert np.abs(gradient).max() > 1e-6 * total, f"{name}: a bias the loss depends on"


def test_preact_blocks_normalise_before_each_convolution():
    # The final norm and each block's bn1 see the block's input: with every running statistic
    # zero/one and gamma/beta 1/0, an eval pass equals one that skips the BatchNorms' scaling only.
    spec = replace(NARROW, style="preact")
    weights = init_weights(spec, 0)
    shapes = parameter_shapes(spec)
    assert shapes["layer2.0.bn1.weight"] == (8,) and shapes["layer2.0.bn2.weight"] == (12,)
    assert list(shapes)[:6] == ["conv1.weight", "conv1.bias"] + [f"bn1.{p}" for p in ("weight", "bias", "running_mean",
                                                                                      "running_var")]
    assert oracle.batch_norm_fed_conv_biases(spec) == sorted(n for n in weights if n.endswith(".bias")
                                                            and ("conv" in n or "downsample" in n))
