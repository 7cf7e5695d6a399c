"""resnet_mx's precision modes and determinism switches, beyond tests/test_precision.py.

bf16 is MXNet's AMP graph pass applied to one network (:func:`resnet_mx.kernels.use_bfloat16`):
these tests read the converted graph's types, check that nothing outside that network changes
(no ``amp.init()``), and run it with the fast paths and in NumPy mode. The GPU switches
(TF32, determinism, cuDNN autotuning) cannot run here; their settings are checked with a GPU
context that is never used.
"""
import json

import numpy as np
import pytest

from helpers import disturbed_weights

pytestmark = pytest.mark.backend("mx")


@pytest.fixture(scope="module")
def mx_backend(backend):
    return backend


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    return rng.uniform(0.0, 1.0, (8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)


def _one_step(trainer, batch):
    images, labels = batch
    loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
    return trainer.to_host([loss_sum])[0] / len(labels)


def _types_by_operator(graph):
    """{operator: the set of NumPy dtypes of its outputs} in a converted graph fed float32 data."""
    internals = graph.get_internals()
    _, types, _ = internals.infer_type(data=np.float32)
    operators = {node["name"]: node["op"] for node in json.loads(graph.tojson(remove_amp_cast=False))["nodes"]}
    seen = {}
    for name, dtype in zip(internals.list_outputs(), types):
        operator = operators.get(name.rsplit("_output", 1)[0])
        if operator is not None:
            seen.setdefault(operator, set()).add(np.dtype(dtype))
    return seen


def test_bf16_runs_convolutions_and_the_dense_layer_in_bfloat16_and_the_rest_in_float32(mx_backend, batch):
    from mxnet.contrib.amp.amp import bfloat16

    trainer = mx_backend.Trainer(device="cpu", precision="bf16")
    assert (trainer.precision, trainer.deterministic) == ("bf16", True)
    assert mx_backend.kernels.uses_bfloat16(trainer.net) and type(trainer.net) is mx_backend.ResNet
    assert np.isfinite(_one_step(trainer, batch))
    types = _types_by_operator(trainer.net._cached_graph[1])
    assert types["Convolution"] == {np.dtype(bfloat16)} and types["FullyConnected"] == {np.dtype(bfloat16)}
    for operator in ("BatchNorm", "Activation", "elemwise_add", "Pooling", "im2col"):
        assert types.get(operator, {np.dtype(np.float32)}) == {np.dtype(np.float32)}, (operator, types[operator])
    assert all(t == np.dtype(np.float32) for t in trainer.net._cached_graph[1].infer_type(data=np.float32)[1])
    # The master weights, their gradients and BatchNorm's running statistics stay float32.
    for name, param in trainer.net.collect_params().items():
        assert param.data().dtype == np.float32, name
        if param.grad_req != "null":
            assert param.grad().dtype == np.float32, name


def test_a_bf16_network_leaves_every_other_network_float32(mx_backend, batch):
    """use_bfloat16 converts one network's graph: unlike amp.init(), it patches no operator."""
    import mxnet as mx
    from mxnet.contrib.amp import amp

    weights = disturbed_weights()
    convolution = mx.nd.Convolution

    def float32_logits():
        net = mx_backend.resnet18()
        mx_backend.import_weights(net, weights)
        net.hybridize()
        return mx_backend.forward(net, batch[0])

    before = float32_logits()
    bf16 = mx_backend.Trainer(device="cpu", precision="bf16")
    bf16.import_weights(weights)
    _one_step(bf16, batch)
    np.testing.assert_array_equal(float32_logits(), before)
    assert mx.nd.Convolution is convolution and not amp._amp_initialized


def test_bf16_computes_the_same_with_and_without_the_fast_layers(mx_backend, batch):
    """At 28 x 28 the tiny-map convolutions are matrix products (im2col and dense layers), which
    the AMP pass converts too (im2col, which has no bfloat16 kernel, in float32)."""
    weights = disturbed_weights()
    losses = {}
    for plain in (True, False):
        trainer = mx_backend.Trainer(mx_backend.resnet18(plain=plain), device="cpu", precision="bf16")
        trainer.import_weights(weights)
        losses[plain] = _one_step(trainer, batch)
    assert mx_backend.kernels.fast_layer_count(trainer.net) > 0
    # Two orders of the same bfloat16 products; the loss of this batch is ~2.3.
    assert abs(losses[True] - losses[False]) < 2e-2, losses


def test_bf16_works_in_numpy_mode(mx_backend, batch):
    from mxnet import npx
    from mxnet.util import is_np_array, is_np_shape

    weights = disturbed_weights()
    logits = {}
    for mode in ("nd", "np"):
        shape, array = is_np_shape(), is_np_array()
        if mode == "np":
            npx.set_np()
        try:
            net = mx_backend.kernels.use_bfloat16(mx_backend.resnet18())
            mx_backend.import_weights(net, weights)
            logits[mode] = mx_backend.forward(net, batch[0])
        finally:
            npx.set_np(shape=shape, array=array)
    assert logits["np"].dtype == np.float32
    np.testing.assert_array_equal(logits["np"], logits["nd"])


def test_bf16_refuses_the_chapters_imperative_network(mx_backend, chapter):
    with pytest.raises(ValueError, match="bf16 needs a HybridBlock.*Sequential runs imperatively"):
        mx_backend.Trainer(chapter.chapter_net(), device="cpu", precision="bf16")


def test_bf16_refuses_a_network_without_resnets_graph_step(mx_backend):
    """Only ResNet passes the graph it traces through the AMP pass (ResNet._get_graph); another
    HybridBlock would need its class changed, which the project does not do."""
    from mxnet.gluon import nn

    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, kernel_size=3, in_channels=1), nn.GlobalAvgPool2D(), nn.Dense(10, in_units=4))
    with pytest.raises(ValueError, match="bf16 needs resnet_mx's ResNet.*HybridSequential has no such step"):
        mx_backend.Trainer(net, device="cpu", precision="bf16")
    assert type(net) is nn.HybridSequential and not mx_backend.kernels.uses_bfloat16(net)


def test_the_chapters_code_takes_fp32_and_tf32_and_refuses_bf16(mx_backend):
    from resnet_mx.reference import ReferenceTrainer

    assert ReferenceTrainer(device="cpu").precision is None
    assert ReferenceTrainer(device="cpu", precision="tf32").precision == "tf32"
    with pytest.raises(ValueError, match=r"imperatively \(nn.Block\).*amp.init\(\)"):
        ReferenceTrainer(device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        ReferenceTrainer(device="cpu", precision="fp16")


@pytest.fixture
def fresh_gpu_switches(mx_backend, monkeypatch):
    """A process whose GPU has not started: no TF32 setting fixed, the variables unset (restored after)."""
    import importlib

    import mxnet as mx

    train = importlib.import_module("resnet_mx.train")  # the package's name `train` is the function
    monkeypatch.setattr(train, "_gpu_tf32", None)
    for name in ("NVIDIA_TF32_OVERRIDE", "MXNET_ENFORCE_DETERMINISM"):
        monkeypatch.delenv(name, raising=False)
    return train.set_precision, mx.gpu(0)


def test_the_gpu_switches_fp32_first(fresh_gpu_switches):
    import os

    set_precision, gpu = fresh_gpu_switches
    set_precision("fp32", True, gpu)
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0" and os.environ["MXNET_ENFORCE_DETERMINISM"] == "1"
    set_precision("fp32", False, gpu)
    assert os.environ["MXNET_ENFORCE_DETERMINISM"] == "0"
    with pytest.raises(ValueError, match="already runs its GPU work without TF32.*in a new process"):
        set_precision("tf32", True, gpu)
    with pytest.raises(ValueError, match="bfloat16 on the CPU only"):
        set_precision("bf16", True, gpu)


def test_the_gpu_switches_tf32_first_and_none_on_the_cpu(fresh_gpu_switches):
    import os

    import mxnet as mx

    set_precision, gpu = fresh_gpu_switches
    for precision in ("fp32", "tf32", "bf16"):
        set_precision(precision, True, mx.cpu())
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ and "MXNET_ENFORCE_DETERMINISM" not in os.environ
    set_precision("tf32", True, gpu)
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ
    with pytest.raises(ValueError, match="already runs its GPU work with TF32"):
        set_precision("fp32", True, gpu)


def test_cudnn_autotuning_is_switched_per_network(mx_backend, batch):
    """What a deterministic Trainer does to its network's convolutions on a GPU; a CPU ignores it."""
    from mxnet.gluon import nn

    from resnet_mx.train import _cudnn_autotune

    net = mx_backend.resnet18(plain=True)
    mx_backend.import_weights(net, disturbed_weights())
    net.hybridize()
    before = mx_backend.forward(net, batch[0])
    convs = []
    net.apply(lambda block: convs.append(block) if isinstance(block, nn.Conv2D) else None)
    _cudnn_autotune(net, allowed=False)
    assert len(convs) == 20 and all(conv._kwargs["cudnn_tune"] == "off" for conv in convs)
    np.testing.assert_array_equal(mx_backend.forward(net, batch[0]), before)
    _cudnn_autotune(net, allowed=True)
    assert not any("cudnn_tune" in conv._kwargs for conv in convs)
