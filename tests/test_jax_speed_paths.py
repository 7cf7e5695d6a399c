"""resnet_jax's CPU speed paths (issue 25) against the computations they replace.

* :func:`resnet_jax.kernels._xla_conv`, XLA's convolution with its own gradient (the kernel
  gradient's input through an optimization barrier): the same values and gradients as XLA's
  autodiff of the same convolution, bit for bit.
* :func:`resnet_jax.kernels._conv_as_matmul` with the kernel's visible taps sliced, not gathered:
  the convolution's values and gradients, exact zeros for the taps that only meet padding.
* :func:`resnet_jax.kernels._conv_by_taps`, one product per kernel tap: the convolution's values
  and gradients; offered on tiny maps only, and the whole network taking it is the oracle's.
* The oneDNN library (:data:`resnet_jax.kernels.CONV_LIBRARIES`): a step compiled with its options
  runs oneDNN's convolutions and computes XLA's default's numbers up to rounding; a Trainer
  chooses it (fast mode) or not (native mode), and its loss and gradients are the default's.
"""
import numpy as np
import pytest

from common.fastpaths import visible_taps

from helpers import assert_oracles_loss_and_gradients

pytestmark = pytest.mark.backend("jax")


@pytest.fixture(scope="module")
def jax_modules(backend):
    import jax
    import jax.numpy as jnp

    from resnet_jax import kernels
    return jax, jnp, kernels


def _lax_conv(jax, strides, padding, groups):
    return lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                     feature_group_count=groups,
                                                     precision=jax.lax.Precision.HIGHEST)


#: (batch, size, in, out, kernel, stride, padding, groups)
CONVS = [(4, 8, 3, 5, 3, 1, 1, 1), (4, 9, 4, 6, 3, 2, 1, 1), (2, 12, 1, 8, 7, 2, 3, 1), (3, 6, 8, 4, 1, 2, 0, 1),
         (2, 5, 8, 8, 3, 1, 1, 4)]


def _case(rng, jnp, batch, size, cin, cout, kernel, groups):
    x = jnp.asarray(rng.normal(size=(batch, size, size, cin)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(kernel, kernel, cin // groups, cout)).astype(np.float32))
    return x, k


def _values_and_gradients(jax, jnp, conv, x, k):
    def loss(x, k):
        y = conv(x, k)
        # A nonlinear loss of every output, and ReLU/BatchNorm-like work on the input, as in a network.
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
    step = jax.jit(jax.value_and_grad(lambda x, k: loss(jax.nn.relu(x * 1.5 + 0.25), k), argnums=(0, 1)))
    value, (dx, dk) = step(x, k)
    return np.asarray(jax.jit(conv)(x, k)), float(value), np.asarray(dx), np.asarray(dk)


@pytest.mark.parametrize("batch, size, cin, cout, kernel, stride, padding, groups", CONVS)
def test_xla_conv_with_its_own_gradient_is_xlas_autodiff_bit_for_bit(jax_modules, rng, batch, size, cin, cout, kernel,
                                                                   stride, padding, groups):
    jax, jnp, kernels = jax_modules
    x, k = _case(rng, jnp, batch, size, cin, cout, kernel, groups)
    strides, pads = (stride, stride), ((padding, padding), (padding, padding))
    plain = _lax_conv(jax, strides, pads, groups)
    ours = lambda x, k: kernels._xla_conv(x, k, strides, pads, groups, jax.lax.Precision.HIGHEST)  # noqa: E731
    for want, got in zip(_values_and_gradients(jax, jnp, plain, x, k), _values_and_gradients(jax, jnp, ours, x, k)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size, stride", [(1, 1), (2, 2), (1, 2), (3, 1)])
def test_the_matmul_path_slices_the_visible_taps(jax_modules, rng, size, stride):
    # On a 1 x 1 map only the centre tap meets the input; on 2 x 2 with stride 2 only the lower-right
    # 2 x 2 taps: the product leaves the others out, and their gradient is exactly zero.
    jax, jnp, kernels = jax_modules
    x, k = _case(rng, jnp, 3, size, 6, 5, 3, 1)
    strides, pads = (stride, stride), ((1, 1), (1, 1))
    plain = _lax_conv(jax, strides, pads, 1)
    ours = lambda x, k: kernels._conv_as_matmul(x, k, strides, pads)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        want, got = _values_and_gradients(jax, jnp, plain, x, k), _values_and_gradients(jax, jnp, ours, x, k)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    taps = visible_taps(3, size, stride, 1)
    visible = np.zeros((3, 3), bool)
    visible[taps[0]:taps[-1] + 1, taps[0]:taps[-1] + 1] = True
    assert visible.sum() < 9 or size == 3
    assert np.all(got[3][~visible] == 0) and np.any(got[3][visible] != 0)


@pytest.mark.parametrize("batch, size, cin, cout, kernel, stride, padding",
                         [(3, 3, 6, 5, 3, 1, 1), (3, 2, 6, 5, 3, 1, 1), (2, 6, 4, 6, 3, 2, 1), (3, 1, 6, 5, 3, 1, 1),
                          (2, 4, 4, 6, 3, 2, 1), (2, 5, 3, 4, 5, 1, 2)])
def test_the_taps_path_is_the_convolution(jax_modules, rng, batch, size, cin, cout, kernel, stride, padding):
    jax, jnp, kernels = jax_modules
    x, k = _case(rng, jnp, batch, size, cin, cout, kernel, 1)
    strides, pads = (stride, stride), ((padding, padding), (padding, padding))
    plain = _lax_conv(jax, strides, pads, 1)
    ours = lambda x, k: kernels._conv_by_taps(x, k, strides, pads)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        want, got = _values_and_gradients(jax, jnp, plain, x, k), _values_and_gradients(jax, jnp, ours, x, k)
    for a, b in zip(got, want):  # float32 rounding of sums in another order, relative to their scale
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.max(np.abs(b)))))


def _offered_paths(backend, jax, jnp, kernels, size, monkeypatch, take=None):
    """Site -> the paths FastConv offers autotuning when ResNet-18 is traced on size x size
    batches (no timing: the spy takes ``take`` where offered, else XLA's own)."""
    offered = {}

    def spy(framework, site, paths, make_run, *args, **kwargs):
        offered[site] = list(paths)
        return take if take in paths else kernels.NATIVE

    monkeypatch.setattr(kernels.autotune, "choose", spy)
    net = backend.resnet18()
    jax.eval_shape(lambda v, x: net.mode(False).apply(v, x), net.variables,
                   jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32))
    return offered


def test_the_taps_path_is_offered_on_tiny_maps_only(backend, jax_modules, monkeypatch):
    jax, jnp, kernels = jax_modules
    offered = _offered_paths(backend, jax, jnp, kernels, 96, monkeypatch)
    with_taps = sorted(site.split(" on ")[0] for site, paths in offered.items() if "taps" in paths)
    # layer4 at 96 x 96 (3 x 3 maps): its first 3 x 3 convolution (stride 2) and the three after it
    # (one site: the same shapes); not its 1 x 1 shortcut, nor anything on a larger map.
    assert with_taps == ["conv 256->512 k3x3 s2 p1 g1", "conv 512->512 k3x3 s1 p1 g1"]
    stem = next(paths for site, paths in offered.items() if site.startswith("conv 1->64"))
    assert stem == ["matmul", kernels.NATIVE]  # few channels, a 48 x 48 map: im2col only


def test_loss_and_gradients_with_the_taps_path_are_the_oracles(backend, jax_modules, monkeypatch):
    # At 32 x 32, layer3 (2 x 2 maps) and layer4 (1 x 1) take the taps path wherever it is offered.
    jax, jnp, kernels = jax_modules
    offered = _offered_paths(backend, jax, jnp, kernels, 32, monkeypatch, take="taps")  # the spy takes taps
    assert any("taps" in paths for paths in offered.values())
    assert_oracles_loss_and_gradients(backend, size=32)


def test_onednn_options_run_onednn_convolutions_with_the_defaults_numbers(jax_modules, rng):
    jax, jnp, kernels = jax_modules
    if jax.default_backend() != "cpu":
        pytest.skip("oneDNN's convolutions are XLA's CPU options")
    x, k = _case(rng, jnp, 8, 12, 16, 32, 3, 1)
    conv = _lax_conv(jax, (1, 1), ((1, 1), (1, 1)), 1)
    loss = lambda x, k: jnp.sum(jnp.sin(conv(x, k)))  # noqa: E731
    grads = {library: jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                              compiler_options=kernels.compiler_options(library))
             for library in (kernels.NATIVE, kernels.ONEDNN)}
    text = grads[kernels.ONEDNN].lower(x, k).compile().as_text()
    assert text.count("__onednn$convolution") >= 3  # the forward pass and both gradients
    assert "__onednn$convolution" not in grads[kernels.NATIVE].lower(x, k).compile().as_text()
    (want, (want_dx, want_dk)), (got, (got_dx, got_dk)) = (grads[library](x, k) for library in grads)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for a, b in ((got_dx, want_dx), (got_dk, want_dk)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_the_conv_library_scope_refuses_an_unknown_library(jax_modules):
    _, _, kernels = jax_modules
    with pytest.raises(ValueError, match="unknown convolution library 'mkl'"):
        with kernels.conv_library_scope("mkl"):
            pass


@pytest.mark.parametrize("mode", ["fast", "native"])
def test_a_trainer_chooses_its_conv_library_by_the_mode(backend, jax_modules, monkeypatch, mode):
    jax, _, kernels = jax_modules
    monkeypatch.setenv("RESNET_FAST_PATHS", mode)
    trainer = backend.Trainer(arch="((1, 8), (1, 16))", device="cpu")
    assert trainer.conv_library is None
    images = np.random.default_rng(0).uniform(size=(4, 1, 16, 16)).astype(np.float32)
    loss, correct = trainer.to_host(trainer.train_step(*trainer.to_batch(images, np.arange(4) % 10)))
    assert trainer.conv_library == (kernels.ONEDNN if mode == "fast" else kernels.NATIVE)
    assert np.isfinite(loss) and 0 <= correct <= 4


def test_loss_and_gradients_with_onednn_are_the_oracles(backend, jax_modules, monkeypatch):
    # The whole network, both libraries: fast mode takes oneDNN (on a CPU), native mode XLA's default.
    for mode in ("fast", "native"):
        monkeypatch.setenv("RESNET_FAST_PATHS", mode)
        assert_oracles_loss_and_gradients(backend, err_msg=mode)


def test_only_the_stems_convolution_is_timed_without_the_input_gradient(backend, jax_modules):
    # The stem's convolution takes the batch, which a step differentiates nothing by: its site is
    # measured (and named) without the input's gradient; every block's convolution with it.
    jax, jnp, kernels = jax_modules
    from flax import linen as nn

    net = backend.resnet18()
    seen = {}

    def spy(call, args, kwargs, context):
        if isinstance(context.module, kernels.FastConv) and context.method_name == "__call__":
            seen["/".join(context.module.path)] = context.module._takes_the_data()
        return call(*args, **kwargs)

    with nn.intercept_methods(spy):
        jax.eval_shape(lambda v, x: net.mode(False).apply(v, x), net.variables,
                       jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32))
    assert len(seen) == kernels.fast_layer_count(net) - 1  # all but the max pool
    assert [path for path, data in seen.items() if data] == ["conv1"]
