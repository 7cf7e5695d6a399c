"""resnet_tf's taps path against the computations it replaces (the mirror of
tests/test_jax_speed_paths.py's taps tests).

* :func:`resnet_tf.kernels._conv_by_taps`, one product per kernel tap: the convolution's values and
  gradients, eagerly, under XLA, and as :data:`resnet_tf.kernels._conv_by_taps_xla` (compiled by
  XLA) inside a TensorFlow graph that is not, as a 96 x 96 step runs it on a CPU.
* Offered on tiny maps only; the whole network taking it is the oracle's.
"""
import numpy as np
import pytest

from helpers import assert_oracles_loss_and_gradients

pytestmark = pytest.mark.backend("tf")


@pytest.fixture(scope="module")
def tf_modules(backend):
    import tensorflow as tf

    from resnet_tf import kernels
    return tf, kernels


#: (batch, size, in, out, kernel, stride, padding)
TINY_CONVS = [(3, 3, 6, 5, 3, 1, 1), (3, 2, 6, 5, 3, 1, 1), (2, 6, 4, 6, 3, 2, 1), (3, 1, 6, 5, 3, 1, 1),
              (2, 4, 4, 6, 3, 2, 1), (2, 5, 3, 4, 5, 1, 2)]


def _values_and_gradients(tf, conv, x, k, compile_as):
    def step(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv(tf.nn.relu(x * 1.5 + 0.25), k)
            # A nonlinear loss of every output, as in a network.
            weights = tf.reshape(tf.range(tf.size(y), dtype=y.dtype), tf.shape(y)) / tf.cast(tf.size(y), y.dtype)
            loss = tf.reduce_sum(tf.sin(y) * weights)
        return (y, loss, *tape.gradient(loss, [x, k]))
    if compile_as != "eager":
        step = tf.function(step, jit_compile=compile_as == "xla")
    return [np.asarray(value) for value in step(x, k)]


@pytest.mark.parametrize("compile_as", ["eager", "graph", "xla"])
@pytest.mark.parametrize("batch, size, cin, cout, kernel, stride, padding", TINY_CONVS)
def test_the_taps_path_is_the_convolution(tf_modules, rng, compile_as, batch, size, cin, cout, kernel, stride,
                                          padding):
    tf, kernels = tf_modules
    x = tf.constant(rng.normal(size=(batch, size, size, cin)).astype(np.float32))
    k = tf.constant(rng.normal(size=(kernel, kernel, cin, cout)).astype(np.float32))
    strides, pads = (stride, stride), (padding, padding)
    plain = lambda x, k: tf.nn.conv2d(tf.pad(x, [[0, 0], pads, pads, [0, 0]]), k, strides, "VALID")  # noqa: E731
    # Outside XLA, the step takes the compiled function; under XLA, the ops themselves.
    taps = kernels._conv_by_taps if compile_as == "xla" else kernels._conv_by_taps_xla
    ours = lambda x, k: taps(x, k, strides, pads)  # noqa: E731
    want, got = _values_and_gradients(tf, plain, x, k, compile_as), _values_and_gradients(tf, ours, x, k, compile_as)
    for a, b in zip(got, want):  # float32 rounding of sums in another order, relative to their scale
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.max(np.abs(b)))))


def _offered_paths(backend, kernels, size, monkeypatch, take=None):
    """Site -> the paths FastConv2D offers autotuning when ResNet-18 runs on size x size batches
    (no timing: the spy takes ``take`` where offered, else TensorFlow's own)."""
    offered = {}

    def spy(framework, site, paths, make_run, *args, **kwargs):
        offered[site] = list(paths)
        return take if take in paths else kernels.NATIVE

    monkeypatch.setattr(kernels.autotune, "choose", spy)
    backend.forward(backend.resnet18(), np.zeros((2, 1, size, size), np.float32))
    return offered


def test_the_taps_path_is_offered_on_tiny_maps_only(backend, tf_modules, monkeypatch):
    _, kernels = tf_modules
    offered = _offered_paths(backend, kernels, 96, monkeypatch)
    with_taps = sorted({site.split(" on ")[0] for site, paths in offered.items() if "taps" in paths})
    # layer4 at 96 x 96 (3 x 3 maps): its first 3 x 3 convolution (stride 2) and the three after it
    # (one site: the same shapes); not its 1 x 1 shortcut, nor anything on a larger map.
    assert with_taps == ["conv 256->512 k3 s2 p1", "conv 512->512 k3 s1 p1"]
    stem = {tuple(paths) for site, paths in offered.items() if site.startswith("conv 1->64")}
    assert stem == {("matmul", kernels.NATIVE)}  # few channels, a 48 x 48 map: im2col only


def test_loss_and_gradients_with_the_taps_path_are_the_oracles(backend, tf_modules, monkeypatch):
    # At 32 x 32, layer3 (2 x 2 maps) and layer4 (1 x 1) take the taps path wherever it is offered.
    _, kernels = tf_modules
    offered = _offered_paths(backend, kernels, 32, monkeypatch, take="taps")  # the spy takes taps
    assert any("taps" in paths for paths in offered.values())
    assert_oracles_loss_and_gradients(backend, size=32)
