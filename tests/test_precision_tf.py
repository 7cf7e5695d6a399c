"""resnet_tf's precisions and determinism switch (issue 13), beyond tests/test_precision.py's
oracle step per precision: Keras' ``mixed_bfloat16`` policy on every layer and nowhere else,
BatchNorm in float32 under it, TensorFlow's TF32 switch per trainer, bf16 in both compilers,
the chapter's code (``resnet_tf.reference``) per precision, and ``enable_op_determinism``,
which the Trainer turns on only on a GPU (checked here on the CPU: it changes no bit and no
step of ours fails under it).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common.spec import get_spec
from common.weights import init_weights

pytestmark = pytest.mark.backend("tf")

#: Two small stages: compiles in seconds, still a stem, BatchNorm, a projection and fc.
SMALL = ((1, 64), (1, 128))


@pytest.fixture(scope="module")
def tf_backend(backend):
    return backend


@pytest.fixture(autouse=True)
def _tf32_and_policy_restored(tf_backend):
    """TF32 is process-wide: put it back as it was; and no test may leave a global Keras policy."""
    import keras
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    yield
    tf.config.experimental.enable_tensor_float_32_execution(before)
    assert keras.config.dtype_policy().name == "float32", "a process-wide Keras dtype policy was left behind"


def _batch(size=28, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (batch, 1, size, size)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int64))


def _trainer(tf_backend, precision, arch=SMALL, compiler=None, net=None, **kwargs):
    trainer = tf_backend.Trainer(net, arch=arch, precision=precision, **kwargs)
    trainer.import_weights(init_weights(get_spec(arch), 0))
    trainer.compiler = compiler  # None: measured (RESNET_FAST_PATHS decides)
    return trainer


def _step(trainer, images, labels):
    x, y = trainer.to_batch(images, labels)
    return trainer.to_host(list(trainer.train_step(x, y)))


def _computing_layers(net):
    from resnet_tf import kernels

    # Keras' InputLayer (of a Sequential built after the policy was set) computes nothing.
    return [layer for layer in kernels._sublayers(net) if type(layer).__name__ != "InputLayer"]


def test_unknown_precision_is_a_one_line_error(tf_backend):
    from resnet_tf import reference

    for make in (lambda: tf_backend.Trainer(arch=SMALL, precision="fp16"),
                 lambda: reference.ReferenceTrainer(precision="fp16")):
        with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16") as error:
            make()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_bf16_is_keras_mixed_policy_on_every_layer_with_float32_variables(tf_backend, plain):
    import keras
    import tensorflow as tf

    net = tf_backend.resnet(SMALL, plain=plain)
    trainer = _trainer(tf_backend, "bf16", net=net)
    assert trainer.precision == "bf16" and trainer.deterministic is True
    layers = _computing_layers(trainer.net)
    assert {layer.dtype_policy.name for layer in layers} == {"mixed_bfloat16"}
    assert {layer.compute_dtype for layer in layers} == {"bfloat16"}
    assert keras.config.dtype_policy().name == "float32"  # per layer: no process-wide policy
    before = {v.path: v.numpy() for v in trainer.net.variables}
    loss, _ = _step(trainer, *_batch())
    assert np.isfinite(loss)
    # Master weights, BatchNorm's parameters and running statistics: float32, and they moved.
    assert {v.dtype for v in trainer.net.variables} == {"float32"}
    running = [v for v in trainer.net.variables if "moving" in v.path]
    assert running and all(not np.array_equal(v.numpy(), before[v.path]) for v in running)
    assert all(value.dtype == np.float32 for value in trainer.export_weights().values())
    # The activations are bfloat16, the logits too (the loss casts them up).
    logits = trainer.net(tf.zeros((2, 28, 28, 1)), training=False)
    assert logits.dtype == tf.bfloat16
    assert tf_backend.forward(trainer.net, _batch(batch=2)[0]).dtype == np.float32
    # The same network trained in fp32 afterwards computes in float32 again.
    again = tf_backend.Trainer(trainer.net, arch=SMALL, precision="fp32")
    assert {layer.compute_dtype for layer in _computing_layers(again.net)} == {"float32"}


@pytest.mark.parametrize("compiler", ["xla", "graph"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_computes_in_float32_under_mixed_bfloat16(tf_backend, compiler, training):
    """Under ``mixed_bfloat16`` BatchNorm is the float32 BatchNorm of the bfloat16 input, rounded
    to bfloat16 at its output: the same statistics, running statistics and (rounded) outputs,
    bit for bit, in both compilers' ways of computing it."""
    import tensorflow as tf

    from resnet_tf import kernels

    rng = np.random.default_rng(3)
    x = tf.cast(tf.constant(rng.normal(2.0, 3.0, (4, 5, 5, 8)).astype(np.float32)), tf.bfloat16)
    mixed, full = kernels.batch_norm(), kernels.batch_norm()
    mixed.dtype_policy = "mixed_bfloat16"
    running_variance = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    for layer in (mixed, full):
        layer.build(x.shape)
        layer.moving_variance.assign(running_variance)
        layer.gamma.assign(np.linspace(0.5, 1.5, 8).astype(np.float32))
        layer.beta.assign(np.linspace(-0.2, 0.2, 8).astype(np.float32))
    assert [v.dtype for v in mixed.weights] == ["float32"] * 4

    @tf.function(jit_compile=compiler == "xla")
    def run(x):
        return mixed(x, training=training), full(tf.cast(x, tf.float32), training=training)

    with kernels.tracing(compiler, 4):
        out_mixed, out_full = run(x)
    assert out_mixed.dtype == tf.bfloat16 and out_full.dtype == tf.float32
    np.testing.assert_array_equal(out_mixed.numpy().astype(np.float32),
                                  tf.cast(tf.cast(out_full, tf.bfloat16), tf.float32).numpy())
    for a, b in zip(mixed.weights, full.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_tf32_switch_follows_each_trainers_precision(tf_backend):
    """TF32 is one process-wide switch: each trainer sets it for its own steps, and the chapter's
    code with precision=None finds TensorFlow's default."""
    import tensorflow as tf

    from resnet_tf import reference
    from resnet_tf.train import TF32_DEFAULT, use_tf32

    enabled = tf.config.experimental.tensor_float_32_execution_enabled
    images, labels = _batch()
    tf32 = _trainer(tf_backend, "tf32")
    assert enabled()
    fp32 = _trainer(tf_backend, "fp32")
    assert not enabled()
    _step(tf32, images, labels)
    assert enabled()
    _step(fp32, images, labels)
    assert not enabled()
    tf32.matmul_gflops(size=64, repeats=1)  # the fp32 yardstick measures fp32
    assert not enabled()
    for precision, expected in ((None, TF32_DEFAULT), ("fp32", False)):
        book = reference.ReferenceTrainer(precision=precision)
        use_tf32(not expected)
        book.eval_step(*book.to_batch(images, labels))
        assert enabled() == expected, precision


def test_tf32_on_the_cpu_computes_fp32_exactly(tf_backend):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU computes TF32 for real")
    images, labels = _batch()
    results = {}
    for precision in ("fp32", "tf32"):
        trainer = _trainer(tf_backend, precision, compiler="graph")  # oneDNN's kernels (XLA's: the same)
        results[precision] = (_step(trainer, images, labels), trainer.export_weights())
    assert results["fp32"][0] == results["tf32"][0]
    for name, value in results["fp32"][1].items():
        np.testing.assert_array_equal(value, results["tf32"][1][name], err_msg=name)


@pytest.mark.parametrize("compiler", ["xla", "graph"])
def test_bf16_step_in_both_compilers_is_bf16_and_near_fp32(tf_backend, compiler):
    """bf16 really rounds (the loss is not fp32's) and stays within bfloat16's reach of fp32.

    bfloat16's 8-bit mantissa rounds each product's inputs by up to 2**-9 (0.2%), relative: so
    the loss and the dense layer's update, one rounding from the loss, agree to about that (0.3%
    seen). Earlier layers' gradients come back through every bfloat16 convolution and through
    BatchNorm, whose mean subtraction cancels most of each gradient and leaves its rounding
    error relatively larger: up to 14% of the update at the stem (both compilers, seen), 0.25
    allowed. A convolution's bias before BatchNorm is left out: its exact gradient is zero,
    what either precision computes is rounding noise."""
    images, labels = _batch(batch=16)
    start = init_weights(get_spec(SMALL), 0)
    results = {}
    for precision in ("fp32", "bf16"):
        trainer = _trainer(tf_backend, precision, compiler=compiler)
        results[precision] = _step(trainer, images, labels)[0], trainer.export_weights()
    (loss32, after32), (loss16, after16) = results["fp32"], results["bf16"]
    assert loss16 != loss32
    assert abs(loss16 - loss32) <= 0.005 * abs(loss32)
    for name, value in start.items():
        if "running" in name or ("conv" in name and name.endswith("bias")):
            continue
        update32, update16 = after32[name] - value, after16[name] - value
        error = np.linalg.norm(update16 - update32) / np.linalg.norm(update32)
        assert error <= (0.01 if name.startswith("fc.") else 0.25), (name, error)


@pytest.mark.parametrize("precision", [None, "fp32", "bf16"])
def test_the_chapters_code_per_precision(tf_backend, precision):
    from resnet_tf import reference

    trainer = reference.ReferenceTrainer(precision=precision)
    trainer.import_weights(init_weights(get_spec("resnet18"), 0))
    policies = {layer.dtype_policy.name for layer in _computing_layers(trainer.net)}
    assert policies == {"mixed_bfloat16" if precision == "bf16" else "float32"}
    loss, correct = _step(trainer, *_batch(batch=16))
    assert np.isfinite(loss) and 0 <= correct <= 16
    assert {v.dtype for v in trainer.net.variables} == {"float32"}
    assert all(value.dtype == np.float32 for value in trainer.export_weights().values())


def test_the_cpu_trainer_leaves_op_determinism_off(tf_backend):
    from tensorflow.python.framework import config  # no public getter

    tf_backend.Trainer(arch=SMALL, deterministic=True)
    assert not config.is_op_determinism_enabled()


_DETERMINISM_SCRIPT = """
import json, sys
import numpy as np
import resnet_tf
from resnet_tf.train import use_op_determinism
from common.spec import get_spec
from common.weights import init_weights
if sys.argv[1] == "on":
    use_op_determinism("/GPU:0")  # a GPU's branch; TensorFlow applies the switch on the CPU too
from tensorflow.python.framework import config
arch = ((1, 64), (1, 128))
rng = np.random.default_rng(0)
images = rng.uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
labels = rng.integers(0, 10, 8).astype(np.int64)
out = {"determinism": config.is_op_determinism_enabled()}
for precision in ("fp32", "bf16"):
    trainer = resnet_tf.Trainer(arch=arch, precision=precision)
    trainer.import_weights(init_weights(get_spec(arch), 0))
    x, y = trainer.to_batch(images, labels)
    loss = trainer.to_host(list(trainer.train_step(x, y)))  # autotuned: timed runs under the switch
    out[precision] = [loss[0], trainer.compiler]
trainer.matmul_gflops(size=64, repeats=1)
print(json.dumps(out))
"""


def test_op_determinism_runs_our_steps_on_the_cpu(tf_backend, tmp_path):
    """What a GPU run switches on, run here: autotuning, both precisions' steps and bench's
    yardstick work under ``enable_op_determinism`` (which refuses unseeded random ops) and
    compute the same step. (Not always the same bits: on the CPU the switch changes how XLA
    sums in fp32, reproducibly; each way reruns bit for bit.)"""
    # One fresh autotuning cache: the first run measures (under the switch), the second reads its choices.
    env = dict(os.environ, RESNET_FAST_PATHS="auto", RESNET_AUTOTUNE_CACHE=str(tmp_path / "autotune.json"),
               TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for switch in ("on", "off"):
        done = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT, switch], env=env, cwd=root,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[switch] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["on"].pop("determinism") is True and results["off"].pop("determinism") is False
    for precision in ("fp32", "bf16"):
        (loss_on, compiler_on), (loss_off, compiler_off) = results["on"][precision], results["off"][precision]
        assert compiler_on == compiler_off  # the second run reads the first one's measurements
        assert loss_on == pytest.approx(loss_off, rel=1e-5), precision
