"""resnet_mx in both of MXNet's array modes: legacy ``nd`` and NumPy (``npx.set_np()``, the chapter's).

MXNet 1.x keeps the mode per thread for the whole process, so every test here that switches
it does so through a fixture that restores the previous mode however the test ends, and
each test checks that it left the legacy mode on. The chapter's cells themselves (NumPy
mode) run in tests/test_model.py through the ``chapter`` fixture.
"""
import re

import numpy as np
import pytest

from common import oracle
from common.data import fashion_mnist_loaders
from common.spec import get_spec, stage_output_shapes
from common.weights import init_weights

from helpers import disturbed_weights, scaled_for_unit_logits

pytestmark = pytest.mark.backend("mx")


@pytest.fixture(scope="module")
def mx_backend(backend):
    return backend


@pytest.fixture(autouse=True)
def _legacy_mode_before_and_after(mx_backend):
    from mxnet.util import is_np_array, is_np_shape

    assert not is_np_array() and not is_np_shape(), "an earlier test left MXNet's NumPy mode on"
    yield
    assert not is_np_array() and not is_np_shape(), "this test left MXNet's NumPy mode on"


@pytest.fixture(params=["nd", "np"])
def mode(request):
    """The array mode the test runs in: "nd" (legacy) or "np" (``npx.set_np()``, undone after)."""
    from mxnet import npx
    from mxnet.util import is_np_array, is_np_shape

    shape, array = is_np_shape(), is_np_array()
    if request.param == "np":
        npx.set_np()
    try:
        yield request.param
    finally:
        npx.set_np(shape=shape, array=array)


def array_type(mode):
    import mxnet as mx

    return mx.np.ndarray if mode == "np" else mx.nd.NDArray


def assert_mode(value, mode):
    import mxnet as mx

    assert isinstance(value, array_type(mode)), type(value)
    if mode == "nd":
        assert not isinstance(value, mx.np.ndarray), type(value)


@pytest.fixture(params=[False, True], ids=["kernels", "plain"])
def plain(request):
    """resnet_mx's network with its fast kernels, and with Gluon's own layers only."""
    return request.param


@pytest.fixture(scope="module", params=[64, 28], ids=["64px", "28px"])
def case(request):
    # The inputs of test_model's oracle tests: at 28 x 28 layer3's maps are 2 x 2 and
    # layer4's 1 x 1, where both matrix-product paths of resnet_mx's convolutions run.
    rng = np.random.default_rng(7)
    images = rng.uniform(0.0, 1.0, (4, 1, request.param, request.param)).astype(np.float32)
    return disturbed_weights(), images


@pytest.fixture
def matrix_products(mx_backend, monkeypatch):
    """Counts the calls of the convolutions' matrix-product path (imperative calls and traces)."""
    conv = mx_backend.kernels.TinyMapConv2D
    original, calls = conv.matrix_product, []

    def counted(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(conv, "matrix_product", counted)
    return calls


# --- the mode is restored ------------------------------------------------------------------

def test_numpy_mode_is_undone_when_a_cell_fails(chapter, mx_backend):
    from mxnet.util import is_np_array

    with pytest.raises(ValueError, match="expected"):
        chapter.call_resnet18_with_other_layout((2, 1, 28, 28))
    assert not is_np_array()
    with pytest.raises(RuntimeError):
        with chapter.numpy_mode():
            assert is_np_array()
            raise RuntimeError
    assert not is_np_array()


# --- the chapter's code --------------------------------------------------------------------

def test_chapter_cells_in_legacy_nd_mode(mx_backend):
    # The chapter's cells with the legacy nd API instead of NumPy mode: nd.random.uniform(shape=...)
    # and Gluon's HybridSequential, imperative and hybridized.
    from mxnet import nd
    from mxnet.gluon import nn

    d2l = mx_backend
    X = nd.random.uniform(shape=(4, 3, 6, 6))
    for args, kwargs, shape in [((3,), {}, (4, 3, 6, 6)), ((6,), dict(use_1x1conv=True, strides=2), (4, 6, 3, 3))]:
        blk = d2l.Residual(*args, **kwargs)
        blk.initialize()
        Y = blk(X)
        assert_mode(Y, "nd")
        assert Y.shape == shape
        blk.hybridize()
        np.testing.assert_allclose(blk(X).asnumpy(), Y.asnumpy(), rtol=0, atol=1e-5)

    net = nn.HybridSequential()
    net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
            nn.BatchNorm(), nn.Activation('relu'),
            nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    net.add(d2l.resnet_block(64, 2, first_block=True),
            d2l.resnet_block(128, 2),
            d2l.resnet_block(256, 2),
            d2l.resnet_block(512, 2))
    net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
    X = nd.random.uniform(shape=(1, 1, 224, 224))
    net.initialize()
    shapes = []
    for layer in net:
        X = layer(X)
        shapes.append(X.shape)
    assert_mode(X, "nd")
    expected = [(1,) + shape for _, shape in stage_output_shapes("resnet18", 1, 224, 224)]
    assert shapes[3:8] + [shapes[8][:2], shapes[9]] == expected
    net.hybridize()
    assert net(nd.random.uniform(shape=(1, 1, 224, 224))).shape == (1, 10)


@pytest.mark.parametrize("num_channels, use_1x1conv, strides", [(3, False, 1), (6, True, 2)], ids=["same", "1x1conv"])
def test_chapter_residual_and_d2l_residual_compute_the_same(chapter, num_channels, use_1x1conv, strides):
    # The chapter's own Residual (nn.Block, npx.relu, Gluon's BatchNorm) and d2l.Residual,
    # given the same weights, agree in training and in evaluation mode, in NumPy mode.
    import mxnet as mx
    from mxnet import autograd

    with chapter.numpy_mode():
        X = mx.np.random.uniform(size=(4, 3, 6, 6))
        ours = chapter.d2l.Residual(num_channels, use_1x1conv, strides)
        theirs = chapter.Residual(num_channels, use_1x1conv, strides)
        for blk in (ours, theirs):
            blk.initialize(mx.init.Xavier())
            blk(X)
        ours_params = dict(ours._collect_params_with_prefix())
        for name, param in theirs._collect_params_with_prefix().items():
            ours_params[name.replace("conv3.", "downsample.0.")].set_data(param.data())
        for record in (autograd.predict_mode, autograd.record):
            with record():
                Y, want = ours(X), theirs(X)
            assert isinstance(Y, mx.np.ndarray)
            np.testing.assert_allclose(Y.asnumpy(), want.asnumpy(), rtol=0, atol=1e-5)


def test_chapter_own_network_runs_in_numpy_mode(chapter):
    # The chapter's own definitions above run as the chapter runs them: nn.Block, imperative.
    import mxnet as mx

    with chapter.numpy_mode():
        net = chapter.chapter_net(chapter.resnet_block)
        net.initialize()
        Y = net(mx.np.random.uniform(size=(2, 1, 96, 96)))
        assert isinstance(Y, mx.np.ndarray) and Y.shape == (2, 10)
        assert isinstance(net[4][0], chapter.Residual) and not isinstance(net[4][0], chapter.d2l.Residual)


# The chapter's network is an nn.Sequential, which the Trainer hybridizes child by child.
@pytest.mark.filterwarnings("ignore:All children of this Sequential:UserWarning")
def test_chapter_training_cell_in_numpy_mode(chapter, capsys):
    import mxnet as mx

    net, history = chapter.training_cell()
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[-2]), lines
    assert re.fullmatch(r"\d+\.\d examples/sec on .+", lines[-1]), lines
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["train_loss"])
    params = list(net.collect_params().values())
    assert all(isinstance(p.data(), mx.np.ndarray) for p in params)


# --- the fast layers are the network's construction ---------------------------------------

@pytest.mark.parametrize("arch, block_convs", [("resnet18", 16), ("resnet50", 48), ("resnext50_32x4d", 0)])
def test_fast_layers_are_constructor_arguments(mx_backend, arch, block_convs):
    # kernels.FAST: the residual blocks' convolutions are TinyMapConv2D and the global pool a mean,
    # as built; the stem and the shortcuts are Gluon's, and so is every convolution of a ResNeXt
    # block (its grouped 3x3 has no fast path: all of a block or none, kernels.block_conv).
    # Nothing changes class when the network runs, and PLAIN is Gluon's layers only.
    import mxnet as mx
    from mxnet.gluon import nn

    kernels = mx_backend.kernels
    for layers in (kernels.FAST, kernels.PLAIN):
        net = mx_backend.ResNet(arch, layers=layers)
        net.initialize()
        before = [type(block) for block in _blocks(net)]
        net(mx.nd.zeros((2, 1, 28, 28)))
        assert [type(block) for block in _blocks(net)] == before
        assert type(net) is mx_backend.ResNet and type(net.conv1) is nn.Conv2D
        tiny = [block for block in _blocks(net) if isinstance(block, kernels.TinyMapConv2D)]
        convs = [block for block in _blocks(net) if isinstance(block, nn.Conv2D)]
        if layers is kernels.PLAIN:
            assert not tiny and type(net.avgpool) is nn.GlobalAvgPool2D and kernels.fast_layer_count(net) == 0
        else:
            assert len(tiny) == block_convs and type(net.avgpool) is kernels.MeanPool2D
            assert kernels.fast_layer_count(net) == block_convs + 1
            in_blocks = [getattr(block, name) for stage in range(1, 5) for block in getattr(net, f"layer{stage}")
                         for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
            assert {id(conv) for conv in tiny} <= {id(conv) for conv in in_blocks}
        assert all(type(conv) in (nn.Conv2D, kernels.TinyMapConv2D) for conv in convs)
    block = mx_backend.Bottleneck(64, conv=kernels.FAST.conv)
    assert {type(block.conv1), type(block.conv2), type(block.conv3)} == {kernels.TinyMapConv2D}
    assert type(mx_backend.Residual(8).conv1) is nn.Conv2D  # the chapter's block: Gluon's layers


def test_a_fast_convolution_the_spec_does_not_name_is_an_error_not_a_silent_gluon_one(mx_backend):
    # kernels.tell_input_size tells each TinyMapConv2D its input size by its canonical name; a block
    # kind whose convolutions are named otherwise would otherwise run Gluon's convolutions unnoticed.
    import mxnet as mx

    net = mx_backend.ResNet("resnet18", layers=mx_backend.kernels.FAST)
    net.layer1[0].extra = mx_backend.kernels.FAST.conv(64, kernel_size=1, in_channels=64)
    net.initialize()
    with pytest.raises(ValueError, match=r"layer1\.0\.extra: TinyMapConv2D layers common.spec.iter_convs does not"):
        net(mx.nd.zeros((2, 1, 28, 28)))


def _blocks(net):
    found = []
    net.apply(found.append)
    return found


# --- the oracle's numbers in both modes ----------------------------------------------------

@pytest.mark.parametrize("hybridized", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_logits_and_running_statistics_match_oracle(mx_backend, mode, plain, case, training, hybridized,
                                                     matrix_products):
    backend = mx_backend
    weights, images = case
    weights = scaled_for_unit_logits(weights, images, training=training)
    net = backend.resnet18(plain=plain)
    if hybridized:
        net.hybridize(static_alloc=True, static_shape=True)
    backend.import_weights(net, weights)
    assert_mode(next(iter(net.collect_params().values())).data(), mode)
    expected_logits, expected_state = oracle.forward(weights, images, training=training, return_state=True)
    assert 0.5 < np.std(expected_logits) < 2.0
    logits = backend.forward(net, images, training=training)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4)
    if plain:
        assert not matrix_products and backend.kernels.fast_layer_count(net) == 0
    else:
        assert matrix_products, "the tiny-map convolutions did not take their matrix-product path"
    exported = backend.export_weights(net)
    for name, value in weights.items():
        if training and name in expected_state:
            assert not np.allclose(value, exported[name]), f"{name}: running statistic did not move"
            np.testing.assert_allclose(exported[name], expected_state[name], rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(exported[name], value, err_msg=name)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_nan_input_gives_nan_logits_as_the_oracle(mx_backend, mode, plain, training):
    weights = init_weights("resnet18", 0)
    images = np.random.default_rng(3).uniform(0, 1, (4, 1, 32, 32)).astype(np.float32)
    images[1, 0, 5, 7] = np.nan
    expected = np.isnan(oracle.forward(weights, images, training=training))
    net = mx_backend.resnet18(plain=plain)
    mx_backend.import_weights(net, weights)
    np.testing.assert_array_equal(np.isnan(mx_backend.forward(net, images, training=training)), expected)


def test_network_returns_arrays_of_the_mode(mx_backend, mode, plain):
    import mxnet as mx
    from mxnet import autograd

    net = mx_backend.resnet18(plain=plain)
    x = (mx.np if mode == "np" else mx.nd).zeros((2, 1, 28, 28))
    for hybridize in (False, True):
        net.hybridize(hybridize)
        with autograd.record():
            assert_mode(net(x), mode)
        assert_mode(net(x), mode)


def test_export_import_round_trip_is_exact(mx_backend, mode, case):
    weights, _ = case
    net = mx_backend.resnet18()
    mx_backend.import_weights(net, weights)
    exported = mx_backend.export_weights(net)
    for name, value in weights.items():
        assert exported[name].dtype == np.float32
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_weights_move_between_modes(mx_backend, case):
    from mxnet import npx

    weights, images = case
    npx.set_np()
    try:
        net = mx_backend.resnet18()
        mx_backend.import_weights(net, weights)
        with_np = mx_backend.export_weights(net), mx_backend.forward(net, images)
    finally:
        npx.reset_np()
    net = mx_backend.resnet18()
    mx_backend.import_weights(net, with_np[0])
    for name, value in mx_backend.export_weights(net).items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    np.testing.assert_array_equal(mx_backend.forward(net, images), with_np[1])


def test_chapter_reference_network_takes_canonical_weights(mx_backend):
    # resnet_mx.reference keeps the chapter's own Residual (conv3, registered before its
    # BatchNorms): the one canonical-name mapping reaches it too, and with the same weights its
    # evaluation-mode logits are the oracle's (Gluon's BatchNorm, eps 1e-5, as everywhere).
    from resnet_mx.reference import ReferenceTrainer

    trainer = ReferenceTrainer(device="cpu")
    weights = disturbed_weights()
    trainer.import_weights(weights)
    exported = trainer.export_weights()
    assert list(exported) == list(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    images = np.random.default_rng(7).uniform(0.0, 1.0, (4, 1, 28, 28)).astype(np.float32)
    weights = scaled_for_unit_logits(weights, images)
    trainer.import_weights(weights)
    x, y = trainer.to_batch(images, np.zeros(4, np.int64))
    logits = trainer.net(x.as_in_context(trainer.device)).asnumpy()
    np.testing.assert_allclose(logits, oracle.forward(weights, images), rtol=0, atol=1e-4)
    assert trainer.architecture() == (get_spec("resnet18"), 1, 10)


def test_trace_shapes(mx_backend, mode):
    net = mx_backend.resnet18()
    traced = mx_backend.trace_shapes(net, np.zeros((1, 1, 224, 224), np.float32))
    assert traced == [(name, (1,) + shape) for name, shape in stage_output_shapes("resnet18", 1, 224, 224)]


# --- training in both modes ----------------------------------------------------------------

def test_trainer_steps_are_the_oracles_steps(mx_backend, mode, plain):
    # As test_training's ten-step test: from its own current weights, each step of the Trainer
    # (hybridized, static graph) is the oracle's step: the loss within 1e-3, the update within
    # 1e-3 of its size.
    lr = 0.05
    trainer = mx_backend.Trainer(mx_backend.resnet18(plain=plain), lr=lr)
    trainer.import_weights(init_weights("resnet18", 0))
    for step in range(3):
        images, labels = oracle.step_batch(seed=step, batch_size=8, size=28)
        before = trainer.export_weights()
        want_loss, want_after = oracle.sgd_step(before, images, labels, lr)
        x, y = trainer.to_batch(images, labels)
        assert_mode(x, mode)
        assert_mode(y, mode)
        loss_sum, correct = trainer.train_step(x, y)
        assert_mode(loss_sum, mode)
        loss, correct = trainer.to_host([loss_sum, correct])
        assert loss / len(labels) == pytest.approx(want_loss, abs=1e-3), f"step {step + 1}"
        assert 0 <= correct <= len(labels)
        after = trainer.export_weights()
        ours = np.sqrt(sum(np.sum((after[k] - before[k]).astype(np.float64) ** 2) for k in before))
        gap = np.sqrt(sum(np.sum((after[k] - want_after[k]).astype(np.float64) ** 2) for k in before))
        assert gap <= 1e-3 * ours, f"step {step + 1}: update differs by {gap / ours:.2e} of its size"
    images, labels = oracle.step_batch(seed=9, batch_size=8, size=28)
    weights = trainer.export_weights()
    loss_sum, correct = trainer.to_host(trainer.eval_step(*trainer.to_batch(images, labels)))
    logits = oracle.forward(weights, images)
    assert correct == int((logits.argmax(axis=1) == labels).sum())
    shifted = logits - logits.max(axis=1, keepdims=True)
    want = float(np.sum(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]))
    assert loss_sum == pytest.approx(want, rel=1e-4)


def test_loss_and_gradients_are_the_oracles(mx_backend, mode, plain):
    lr = 0.05
    weights = init_weights("resnet18", 0)
    images, labels = oracle.step_batch(seed=1, batch_size=8, size=28)
    want_loss, want_after = oracle.sgd_step(weights, images, labels, lr)
    net = mx_backend.resnet18(plain=plain)
    mx_backend.import_weights(net, weights)
    loss, gradients = mx_backend.loss_and_gradients(net, images, labels)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    want = {name: (weights[name].astype(np.float64) - want_after[name]) / lr for name in gradients}
    total = np.sqrt(sum(np.sum(g ** 2) for g in want.values()))
    gap = np.sqrt(sum(np.sum((gradients[k] - want[k]) ** 2) for k in want))
    assert gap <= 1e-3 * total


def test_load_data_yields_arrays_of_the_active_mode(mx_backend, mode):
    train_iter, test_iter = mx_backend.load_data_fashion_mnist(32, resize=None, subset=64, test_subset=32,
                                                               synthetic=True)
    train_loader, test_loader = fashion_mnist_loaders(32, resize=None, subset=64, test_subset=32, synthetic=True)
    for ours, theirs in ((train_iter, train_loader), (test_iter, test_loader)):
        batches = 0
        for (images, labels), (want_images, want_labels) in zip(ours, theirs):
            assert_mode(images, mode)
            assert_mode(labels, mode)
            assert images.dtype == np.float32 and labels.dtype == np.int32
            np.testing.assert_array_equal(mx_backend.to_numpy(images), want_images)
            np.testing.assert_array_equal(mx_backend.to_numpy(labels), want_labels)
            batches += 1
        assert batches == len(theirs)


def test_train_ch6_prints_the_chapter_lines(mx_backend, mode, capsys):
    train_iter, test_iter = mx_backend.load_data_fashion_mnist(32, resize=None, subset=64, test_subset=64,
                                                               synthetic=True)
    mx_backend.train_ch6(mx_backend.resnet18(), train_iter, test_iter, 1, 0.05, mx_backend.try_gpu())
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[-2]), lines
    assert re.fullmatch(r"\d+\.\d examples/sec on .+", lines[-1]), lines
