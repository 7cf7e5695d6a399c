"""resnet_jax's alignments with the other backends, against the book's Flax layers (issue 14).

The book's JAX code computes another function than PyTorch's: ``padding='same'`` pads a stride-2
convolution or pooling window on an even size by (0, 1), not (1, 1), and Flax's ``BatchNorm``
keeps its running statistics with momentum 0.99 in the other convention (0.01 of the batch's)
and the biased variance. resnet_jax's helpers compute the oracle's function; the book's layers
do not, so both halves are asserted.
"""
import numpy as np
import pytest

from common import oracle
from common.spec import BN_MOMENTUM

from helpers import disturbed_weights, scaled_for_unit_logits

pytestmark = pytest.mark.backend("jax")


@pytest.fixture(scope="module")
def jax_modules(backend):
    import jax.numpy as jnp
    from flax import linen as nn

    from resnet_jax import kernels
    return jnp, nn, kernels


def test_symmetric_padding_is_pytorchs_and_same_is_not(jax_modules, rng):
    jnp, nn, kernels = jax_modules
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)  # even size, stride 2: 'same' pads (0, 1)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    expected, _ = oracle.conv2d(x.astype(np.float64), weight, bias, 2, 1)
    variables = {"params": {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)}}
    nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    ours = kernels.conv2d(4, 3, strides=2, padding=1).apply(variables, nhwc)
    book = nn.Conv(4, kernel_size=(3, 3), strides=(2, 2), padding="same").apply(variables, nhwc)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), expected, rtol=0, atol=1e-4)
    assert np.abs(np.asarray(book).transpose(0, 3, 1, 2) - expected).max() > 0.1
    # the max pool likewise: 'same' shifts every window of a stride-2 pool by one pixel
    pooled, _ = oracle.max_pool2d(x.astype(np.float64), 3, 2, 1)
    ours = kernels.PLAIN.max_pool(3, 2, 1).apply({}, nhwc)
    book = nn.max_pool(nhwc, window_shape=(3, 3), strides=(2, 2), padding="same")
    np.testing.assert_array_equal(np.asarray(ours).transpose(0, 3, 1, 2), pooled.astype(np.float32))
    assert not np.array_equal(np.asarray(book).transpose(0, 3, 1, 2), pooled.astype(np.float32))


@pytest.mark.parametrize("layers", ["PLAIN", "FAST"])
def test_the_max_pool_paths_agree_on_values_and_gradients(jax_modules, rng, layers):
    # The separable fast path and Flax's max pool: the same maxima, the gradient to the first maximum.
    jnp, nn, kernels = jax_modules
    import jax

    x = np.round(rng.normal(size=(2, 7, 7, 3)), 1).astype(np.float32)  # rounded: ties in many windows
    pool = getattr(kernels, layers).max_pool(3, 2, 1)
    weights = jnp.arange(1.0, 49.0).reshape(1, 4, 4, 3)
    values, gradient = jax.value_and_grad(lambda x: jnp.sum(pool.apply({}, x) * weights))(x)
    out, cache = oracle.max_pool2d(x.transpose(0, 3, 1, 2).astype(np.float64), 3, 2, 1)
    weights = np.arange(1.0, 49.0).reshape(1, 4, 4, 3).transpose(0, 3, 1, 2)
    expected = oracle.max_pool2d_backward(np.broadcast_to(weights, out.shape), cache)
    np.testing.assert_allclose(float(values), float(np.sum(out * weights)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(gradient).transpose(0, 3, 1, 2), expected)


def test_batch_norm_keeps_pytorchs_running_statistics_and_flaxs_does_not(jax_modules, rng):
    jnp, nn, kernels = jax_modules
    x = rng.normal(2.0, 3.0, (4, 3, 2, 5)).astype(np.float32)  # NHWC, 5 channels, 24 values each
    gamma, beta = rng.uniform(0.5, 1.5, 5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    mean, var = rng.normal(size=5).astype(np.float32), rng.uniform(0.5, 2.0, 5).astype(np.float32)
    variables = {"params": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)},
                 "batch_stats": {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}}
    nchw = x.transpose(0, 3, 1, 2).astype(np.float64)
    expected, _, batch_mean, unbiased = oracle.batch_norm_train(nchw, gamma, beta)
    want_mean, want_var = oracle.update_running_statistics(mean, var, batch_mean, unbiased)
    assert BN_MOMENTUM == 0.1
    for layer, aligned in ((kernels.batch_norm(False), True), (nn.BatchNorm(False), False)):
        out, state = layer.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
        have_mean, have_var = (np.asarray(state["batch_stats"][k]) for k in ("mean", "var"))
        if aligned:
            np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected, rtol=0, atol=1e-5)
            np.testing.assert_allclose(have_mean, want_mean, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(have_var, want_var, rtol=1e-6, atol=1e-6)
        else:  # Flax: 0.99 * running + 0.01 * batch, and the biased batch variance
            biased = unbiased * (23 / 24)
            np.testing.assert_allclose(have_mean, 0.99 * mean + 0.01 * batch_mean, rtol=1e-5)
            np.testing.assert_allclose(have_var, 0.99 * var + 0.01 * biased, rtol=1e-5)
            assert np.abs(have_var - want_var).max() > 1e-2
    # in evaluation mode both normalise with the running statistics; Flax's epsilon is PyTorch's
    ours = kernels.batch_norm(True).apply(variables, jnp.asarray(x))
    book = nn.BatchNorm(True).apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(book), rtol=1e-5, atol=1e-5)


def test_the_books_network_is_another_function_and_resnet18_the_oracles(backend, jax_modules):
    from resnet_jax import reference

    images = np.random.default_rng(5).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    weights = scaled_for_unit_logits(disturbed_weights(), images)
    expected = oracle.forward(weights, images)
    book, ours = backend.Network(reference.ResNet18()), backend.resnet18(plain=True)
    for net in (book, ours):
        backend.import_weights(net, weights)
    np.testing.assert_allclose(backend.forward(ours, images), expected, rtol=0, atol=1e-4)
    assert np.abs(backend.forward(book, images) - expected).max() > 1e-2
