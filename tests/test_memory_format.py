"""PyTorch's memory layout, one more autotuned choice (resnet_torch.kernels.choose_memory_format): a
network the Trainer builds trains in NCHW or channels_last memory, and either way computes the
oracle's function, exports canonical OIHW weights and writes the same checkpoints."""
import json

import numpy as np
import pytest

from common import autotune, oracle
from common.autotune import CACHE_ENV, FAST_PATHS_ENV, NATIVE
from common.optim import Recipe, Schedule
from common.weights import init_weights

from helpers import SMALL_ARCH, disturbed_weights, scaled_for_unit_logits

pytestmark = pytest.mark.backend("torch")


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """Auto mode with an empty cache file of its own; returns the file's path."""
    path = tmp_path / "autotune.json"
    monkeypatch.setenv(FAST_PATHS_ENV, "auto")
    monkeypatch.setenv(CACHE_ENV, str(path))
    autotune.clear_memory()
    yield path
    autotune.clear_memory()


def _channels_last(tensor):
    import torch

    return tensor.contiguous(memory_format=torch.channels_last)


def _is_channels_last(tensor) -> bool:
    import torch

    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


# --- the fast convolutions on channels_last inputs ----------------------------------------------

#: (in, out, kernel, stride, padding, map size, groups): each FastConv2d path, and a grouped
#: convolution, which takes nn.Conv2d's own.
CONVOLUTIONS = {
    "dense 2x2": (64, 64, 3, 1, 1, 2, 1),
    "dense 2x2 -> 1x1": (32, 64, 3, 2, 1, 2, 1),
    "unfold stem": (1, 16, 3, 1, 1, 12, 1),
    "unfold layer4": (32, 64, 3, 2, 1, 6, 1),
    "grouped": (32, 32, 3, 1, 1, 6, 4),
}


@pytest.mark.parametrize("mode", ["fast", "native", "auto"])
@pytest.mark.parametrize("case", list(CONVOLUTIONS))
def test_fast_convolutions_compute_the_same_on_channels_last_inputs(backend, auto, monkeypatch, mode, case):
    import torch
    from torch import nn

    monkeypatch.setenv(FAST_PATHS_ENV, mode)
    cin, cout, kernel, stride, padding, size, groups = CONVOLUTIONS[case]
    torch.manual_seed(0)
    plain = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups).double()
    fast = backend.kernels.FastConv2d(cin, cout, kernel, stride, padding, groups=groups)
    fast.load_state_dict({k: v.float() for k, v in plain.state_dict().items()})
    fast = fast.to(memory_format=torch.channels_last)
    x = torch.rand(4, cin, size, size, dtype=torch.float64)
    x_fast = _channels_last(x.float()).requires_grad_(True)
    x = x.requires_grad_(True)
    want, got = plain(x), fast(x_fast)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=0, atol=1e-5)
    direction = torch.rand(want.shape, dtype=torch.float64)
    (want * direction).sum().backward()
    (got * _channels_last(direction.float())).sum().backward()
    np.testing.assert_allclose(x_fast.grad.numpy(), x.grad.numpy(), rtol=0, atol=1e-5)
    for name, parameter in plain.named_parameters():
        grad = getattr(fast, name).grad
        assert grad.shape == parameter.shape, name
        scale = float(parameter.grad.abs().max())
        np.testing.assert_allclose(grad.contiguous().numpy(), parameter.grad.numpy(), rtol=0, atol=1e-5 * scale,
                                   err_msg=name)
    if mode == "auto" and groups == 1:  # a site of its own: what NCHW measured does not decide
        (sites,) = json.loads(auto.read_text()).values()
        assert all(" channels_last " in site for site in sites), sites


# --- a network in channels_last memory against the oracle -----------------------------------

@pytest.fixture(scope="module", params=[64, 28], ids=["64px", "28px"])
def case(request):
    rng = np.random.default_rng(7)
    images = rng.uniform(0.0, 1.0, (4, 1, request.param, request.param)).astype(np.float32)
    weights = scaled_for_unit_logits(disturbed_weights(), images, training=True)
    return weights, images


@pytest.mark.parametrize("plain", [False, True], ids=["kernels", "plain"])
def test_a_network_in_channels_last_computes_the_oracles_function(backend, plain, case):
    import torch

    weights, images = case
    net = backend.resnet18(plain=plain).to(memory_format=torch.channels_last)
    backend.import_weights(net, weights)
    assert _is_channels_last(net.layer1[0].conv1.weight)
    np.testing.assert_allclose(backend.forward(net, images, training=False),
                               oracle.forward(weights, images, training=False), rtol=0, atol=1e-4)
    labels = np.arange(len(images)) % 10
    loss, gradients = backend.loss_and_gradients(net, images, labels)
    want_loss, want_gradients = oracle.loss_and_gradients(weights, images, labels)
    assert loss == pytest.approx(want_loss, abs=1e-4)
    total = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in want_gradients.values()))
    near_zero = set(oracle.batch_norm_fed_conv_biases("resnet18"))  # zero up to rounding
    for name, want in want_gradients.items():
        assert gradients[name].flags.c_contiguous, name  # OIHW memory order
        gap = float(np.linalg.norm(gradients[name] - want))
        # 1e-3: at 28 x 28 train-mode BatchNorm over 4 pixels of layer4 makes NCHW's own gap 5e-5.
        assert gap <= (1e-4 * total if name in near_zero else 1e-3 * np.linalg.norm(want)), name
    np.testing.assert_allclose(backend.forward(net, images, training=True),
                               oracle.forward(weights, images, training=True), rtol=0, atol=1e-4)
    exported = backend.export_weights(net)
    assert all(value.flags.c_contiguous for value in exported.values())  # OIHW memory order


# --- the Trainer: the choice, and training on either side of it -------------------------------

def _batch(size=28, batch=8, seed=2):
    return oracle.step_batch(seed=seed, batch_size=batch, size=size)


@pytest.mark.parametrize("mode, channels_last", [("fast", True), ("native", False)])
def test_the_environment_forces_the_layout_without_measuring(backend, auto, monkeypatch, mode, channels_last):
    import torch

    monkeypatch.setenv(FAST_PATHS_ENV, mode)
    trainer = backend.Trainer(arch=SMALL_ARCH)
    assert trainer.memory_format is None  # chosen on the first batch
    x, _ = trainer.to_batch(*_batch())
    want = torch.channels_last if channels_last else torch.contiguous_format
    assert trainer.memory_format == want
    assert x.is_contiguous(memory_format=want)
    assert _is_channels_last(trainer.net.layer1[0].conv1.weight) == channels_last
    assert not auto.exists()  # nothing measured
    # A network given to the Trainer trains as built: NCHW batches.
    given = backend.Trainer(backend.resnet(SMALL_ARCH))
    given.to_batch(*_batch())
    assert given.memory_format == torch.contiguous_format
    assert not _is_channels_last(given.net.layer1[0].conv1.weight)


def test_auto_measures_the_layout_once_per_site_and_caches_it(backend, auto, monkeypatch):
    measured = []
    timed_step = backend.kernels._timed_step
    monkeypatch.setattr(backend.kernels, "_timed_step", lambda *args: measured.append(args[1]) or timed_step(*args))
    trainer = backend.Trainer(arch=SMALL_ARCH)
    trainer.to_batch(*_batch())
    assert len(measured) == 2 and trainer.memory_format in measured
    (sites,) = json.loads(auto.read_text()).values()
    (site,) = [site for site in sites if site.startswith("memory format of")]
    assert site == "memory format of ((1, 16), (1, 32)) on (8, 1, 28, 28) cpu train fp32"
    assert set(sites[site]["ms"]) == {"channels_last", NATIVE}
    assert backend.kernels.MEMORY_FORMATS[sites[site]["choice"]] == trainer.memory_format
    autotune.clear_memory()
    again = backend.Trainer(arch=SMALL_ARCH)
    again.to_batch(*_batch())
    assert len(measured) == 2 and again.memory_format == trainer.memory_format  # read back from the file


@pytest.mark.parametrize("layout", ["channels_last", NATIVE])
def test_a_training_step_is_the_oracles_in_either_layout(backend, layout):
    images, labels = _batch(size=32)
    weights = init_weights("resnet18", 0)
    trainer = backend.Trainer(lr=0.05)
    trainer.use_memory_format(backend.kernels.MEMORY_FORMATS[layout])
    trainer.import_weights(weights)
    loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
    want_loss, want_after = oracle.sgd_step(weights, images, labels, 0.05)
    assert trainer.to_host([loss_sum])[0] / len(labels) == pytest.approx(want_loss, abs=1e-3)
    after = trainer.export_weights()
    assert all(value.flags.c_contiguous for value in after.values())

    def norm(values):
        return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in values)))
    assert norm(after[k] - want_after[k] for k in weights) <= 1e-3 * norm(after[k] - weights[k] for k in weights)


def test_the_optimizer_state_moves_between_layouts(backend):
    """Momentum buffers exported from a channels_last Trainer continue in an NCHW one and back, and
    a state imported before the layout is chosen follows the parameters into it."""
    import torch

    recipe = Recipe(Schedule("constant", 0.05, 8), momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = [_batch(seed=seed) for seed in (3, 4, 5)]
    weights = init_weights(SMALL_ARCH, 0)

    def trainer(memory_format, state=None, start=None):
        made = backend.Trainer(arch=SMALL_ARCH, recipe=recipe)
        made.import_weights(start or weights)
        if state is not None:
            made.import_optimizer_state(state)
        made.use_memory_format(memory_format)
        return made

    def step(made, batch):
        made.to_host(list(made.train_step(*made.to_batch(*batch))))

    reference = trainer(torch.contiguous_format)
    for batch in batches:
        step(reference, batch)
    for first, second in [(torch.channels_last, torch.contiguous_format),
                          (torch.contiguous_format, torch.channels_last)]:
        one = trainer(first)
        for batch in batches[:2]:
            step(one, batch)
        state = one.export_optimizer_state()
        assert all(np.asarray(v).flags.c_contiguous for v in state.values())
        two = trainer(second, state, one.export_weights())
        buffers = [two.optimizer.state[p]["momentum_buffer"] for p in two.net.parameters() if p.dim() == 4]
        assert all(b.is_contiguous(memory_format=second) for b in buffers)
        step(two, batches[2])
        got, want = two.export_weights(), reference.export_weights()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)
