"""What several test files share: the checked-in expectations, the real data, and weights
that leave no term of the network trivial. (Fixtures live in conftest.py, which tests do
not import.)"""
import json
import os

import numpy as np
import pytest

from common import oracle
from common.data import FILES
from common.spec import block_convs, get_spec, iter_blocks
from common.weights import init_weights

#: Two small stages of the book's arch tuple, for what does not depend on the network (the training
#: loop, the command line, settings that must not change a bit): it compiles in seconds where
#: ResNet-18 takes 10 to 30 s per Trainer under XLA on 2 cores. (Not for the NaN tests: in tf and jax
#: this network's logits stay finite for NaN images, ResNet-18's do not; not investigated yet.)
SMALL_ARCH = "((1, 16), (1, 32))"

EXPECTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected")

REAL_DATA_DIR = os.environ.get("FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist"


def load_expected(name="training.json") -> dict:
    """A file of ``tests/expected/`` (see the tools that write them)."""
    with open(os.path.join(EXPECTED_DIR, name)) as handle:
        return json.load(handle)


def have_real_data() -> bool:
    return all(os.path.exists(os.path.join(REAL_DATA_DIR, name))
               or os.path.exists(os.path.join(REAL_DATA_DIR, name + ".gz"))
               for names in FILES.values() for name in names)


def real_data_dir():
    """The real Fashion-MNIST directory, or skip (fail under RESNET_REQUIRE_REAL_DATA=1, as in CI)."""
    if have_real_data():
        return REAL_DATA_DIR
    reason = (f"real Fashion-MNIST not found in {REAL_DATA_DIR}: apt-get install dataset-fashion-mnist "
              f"or set FASHION_MNIST_DIR")
    if os.environ.get("RESNET_REQUIRE_REAL_DATA") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def data_source() -> dict:
    """``data_dir=`` the real data when it is here, else ``synthetic=True`` (never skips)."""
    return dict(data_dir=REAL_DATA_DIR) if have_real_data() else dict(synthetic=True)


def disturbed_weights(arch="resnet18", seed=0, in_channels=1, num_classes=10, dtype=np.float32):
    """Initial weights with every array disturbed, so no term of the function is trivial.

    Non-zero biases and BatchNorm betas, gammas away from 1 and random running statistics (so
    eval mode differs from train mode).
    """
    rng = np.random.default_rng(seed + 100)
    weights = {k: v.astype(dtype) for k, v in init_weights(arch, seed, in_channels, num_classes).items()}
    for name, value in weights.items():
        if name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 2.0, value.shape).astype(dtype)
        elif name.endswith("running_mean") or name.endswith("bias"):
            weights[name] = rng.normal(0.0, 0.1, value.shape).astype(dtype)
        elif value.ndim == 1:  # BatchNorm gamma
            weights[name] = rng.uniform(0.5, 1.5, value.shape).astype(dtype)
    return weights


def damped_residuals(weights, arch, factor=0.1):
    """``weights`` with every residual branch scaled down by ``factor`` at its end: the last
    BatchNorm's gamma and beta (the last convolution's weight and bias in a pre-activation block).

    Trained deep ResNets look like this (and torchvision's ``zero_init_residual`` starts so):
    each block adds a small correction to its input. With every branch at full strength, a deep
    random network in training mode is chaotic: a 1e-6 change of the weights moves ResNet-152's
    logits by 0.2 on a small batch, so no float32 computation could be held to the oracle there.
    """
    spec = get_spec(arch)
    weights = dict(weights)
    for block in iter_blocks(spec):
        convs = block_convs(block, spec, shortcut=False)
        last = convs[-1].name if spec.preact else f"{block.name}.bn{len(convs)}"
        for name in (f"{last}.weight", f"{last}.bias"):
            if name in weights:
                weights[name] = (weights[name] * factor).astype(weights[name].dtype)
    return weights


def scaled_for_unit_logits(weights, images, training=False, arch="resnet18"):
    """Scale fc.weight so that the oracle's logits (eval or train mode) have a spread of about 1."""
    logits = oracle.forward(weights, images, training=training, arch=arch)
    weights = dict(weights)
    weights["fc.weight"] = (weights["fc.weight"] / max(float(np.std(logits)), 1e-6)).astype(np.float32)
    return weights


def epoch_batches(loader):
    """Every batch of ``loader``'s current epoch, copied."""
    return [(images.copy(), labels.copy()) for images, labels in loader]


def assert_same_batches(got, expected):
    """The same batches, bit for bit, in the same order."""
    assert len(got) == len(expected)
    for (images, labels), (expected_images, expected_labels) in zip(got, expected):
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(images, expected_images)


def assert_oracles_loss_and_gradients(backend, size=32, err_msg=""):
    """ResNet-18 built now by ``backend`` (with whatever paths it takes) gives the oracle's
    train-mode loss (1e-5 relative) and gradients (1e-5 of the gradients' norm) from the
    initial weights on four ``size`` x ``size`` images."""
    weights = init_weights("resnet18", 0)
    images = np.random.default_rng(7).uniform(0, 1, (4, 1, size, size)).astype(np.float32)
    labels = np.array([0, 3, 7, 9])
    expected_loss, expected = oracle.loss_and_gradients(weights, images, labels)
    scale = np.sqrt(sum(float(np.sum(np.square(g))) for g in expected.values()))
    net = backend.resnet18()
    backend.import_weights(net, weights)
    loss, gradients = backend.loss_and_gradients(net, images, labels)
    assert loss == pytest.approx(expected_loss, rel=1e-5), err_msg
    for name, want in expected.items():
        np.testing.assert_allclose(gradients[name], want, rtol=0, atol=1e-5 * scale, err_msg=f"{err_msg} {name}")
