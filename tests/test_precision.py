"""``--precision`` (fp32, tf32, bf16) and ``deterministic``: the same contract in every backend.

fp32 is exact: a step is the oracle's within the float32 bounds of the other tests. TF32 and
bf16 round on purpose, so their bound comes from the oracle computing with the same roundings
(``oracle.sgd_step(..., precision=...)``: operands of every product rounded to the format's
mantissa, bf16 results too): a backend's step may differ from the exact step by at most
``ROUNDING_MARGIN`` times as much as that emulation does. On this project's CPUs TF32 does not
exist and a tf32 run computes fp32, so it is held to the fp32 bounds there.
"""
import numpy as np
import pytest

from common import oracle
from common.hparams import PRECISIONS, TrainConfig, check_precision
from common.naming import is_buffer
from common.weights import init_weights

from helpers import SMALL_ARCH, damped_residuals, disturbed_weights, scaled_for_unit_logits

#: Measured with resnet_torch's bf16 autocast (28 px, batch 32, this test's weights): the step's
#: update differs from the exact one by 0.17 of its size against the emulation's 0.16, the loss
#: by 1.7e-3 against 2.6e-3, the running statistics by 7.3e-4 against 7.0e-4 of their change.
#: Two independent draws of the same rounding noise; 3 leaves room for the luck of one batch
#: while a wrong function (another normalisation, a float16 or float32 path) lands far outside.
ROUNDING_MARGIN = 3.0
LR = 0.05


def _gap(a, b, names) -> float:
    return float(np.sqrt(sum(np.sum((np.asarray(a[n], np.float64) - b[n]) ** 2) for n in names)))


@pytest.fixture(scope="module")
def step_case():
    images, labels = oracle.step_batch(0, 32, 28)
    before = scaled_for_unit_logits(damped_residuals(disturbed_weights(), "resnet18"), images, training=True)
    loss, after = oracle.sgd_step(before, images, labels, LR)
    return images, labels, before, loss, after


def _relative_gaps(loss, after, case):
    """How far a step (loss before it, weights after it) is from the exact oracle step: the loss,
    the update (of its size) and the running statistics (of their change)."""
    _, _, before, want_loss, want_after = case
    trainable = [n for n in before if not is_buffer(n)]
    buffers = [n for n in before if is_buffer(n)]
    return {"loss": abs(loss - want_loss),
            "update": _gap(after, want_after, trainable) / _gap(want_after, before, trainable),
            "statistics": _gap(after, want_after, buffers) / _gap(want_after, before, buffers)}


def _backend_step(backend, precision, case, arch="resnet18", **options):
    images, labels, before, _, _ = case
    trainer = backend.Trainer(arch=arch, lr=LR, device="cpu", precision=precision, **options)
    trainer.import_weights(before)
    loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
    return trainer.to_host([loss_sum])[0] / len(labels), trainer.export_weights(), trainer


# --- framework-free ------------------------------------------------------------------------

def test_round_mantissa_rounds_to_nearest_even():
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-7 + 2**-9, -3.0, 0.0])
    np.testing.assert_array_equal(oracle.round_mantissa(values, "bf16"),
                                  [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -3.0, 0.0])
    np.testing.assert_array_equal(oracle.round_mantissa(1 + 2**-11, "tf32"), 1.0)  # a tie, kept even
    np.testing.assert_array_equal(oracle.round_mantissa(1 + 3 * 2**-11, "tf32"), 1 + 2**-9)
    assert oracle.round_mantissa(0.1, "fp32") == np.float32(0.1)
    with pytest.raises(ValueError, match="precision must be one of"):
        oracle.round_mantissa(1.0, "fp16")


@pytest.mark.parametrize("bad", ["fp16", "FP32", None, 32])
def test_an_unknown_precision_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match=r"precision must be one of fp32, tf32, bf16, got"):
        check_precision(bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision=bad).validate()
    with pytest.raises(ValueError, match="deterministic must be True or False"):
        TrainConfig(deterministic="yes").validate()


def test_the_emulated_roundings_are_what_the_bounds_say(step_case):
    """The emulation itself: bf16 moves a step visibly, TF32 less, fp32 not at all."""
    images, labels, before, _, _ = step_case
    gaps = {p: _relative_gaps(*oracle.sgd_step(before, images, labels, LR, precision=p), step_case)
            for p in PRECISIONS}
    assert gaps["fp32"]["update"] < 1e-12
    assert 0.02 < gaps["tf32"]["update"] < gaps["bf16"]["update"] < 0.5


# --- every backend -----------------------------------------------------------------------------

@pytest.mark.backend("torch", "tf", "jax")  # MXNet casts to bfloat16 only inside AMP's graphs
def test_round_mantissa_is_the_frameworks_own_bfloat16(chapter):
    """The emulation's rounding against the framework's float32 -> bfloat16 conversion."""
    rng = np.random.default_rng(0)
    values = (rng.normal(size=20_000) * 10.0 ** rng.integers(-30, 30, 20_000)).astype(np.float32)
    np.testing.assert_array_equal(oracle.round_mantissa(values, "bf16").astype(np.float32),
                                  chapter.bfloat16_round_trip(values))


def test_an_unknown_precision_is_refused_by_the_trainer(backend):
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16, got 'fp16'"):
        backend.Trainer(device="cpu", precision="fp16")


@pytest.fixture(scope="module")
def fp32_step(backend, step_case):
    """One fp32 step (the other tests' reference: each Trainer costs a compile in tf and jax)."""
    return _backend_step(backend, "fp32", step_case)


@pytest.fixture(scope="module")
def equality_case(backend):
    """A small network's step case and its fp32 step: the reference of the tests of settings that must
    not change a bit (each Trainer compiles in tf and jax; bounds are tested on ResNet-18)."""
    images, labels = oracle.step_batch(0, 8, 28)
    case = (images, labels, init_weights(SMALL_ARCH, 0), None, None)
    return case, _backend_step(backend, "fp32", case, arch=SMALL_ARCH)


def test_fp32_on_a_cpu_is_the_exact_step(fp32_step, step_case):
    loss, after, trainer = fp32_step
    assert trainer.precision == "fp32" and trainer.deterministic is True
    gaps = _relative_gaps(loss, after, step_case)
    assert gaps["loss"] < 1e-4 and gaps["update"] < 1e-3 and gaps["statistics"] < 1e-4, gaps


def test_tf32_on_a_cpu_is_fp32_bit_for_bit(backend, equality_case):
    """CPUs have no TF32: a tf32 run computes fp32, bit for bit."""
    case, fp32_step = equality_case
    loss, after, trainer = _backend_step(backend, "tf32", case, arch=SMALL_ARCH)
    assert trainer.precision == "tf32"
    assert loss == fp32_step[0]
    for name in after:
        np.testing.assert_array_equal(after[name], fp32_step[1][name], err_msg=name)


def test_a_bf16_step_is_the_oracles_within_bf16_rounding(backend, step_case):
    """Evaluation first, then the step, on one Trainer. Eval mode reports a mean loss: logits
    off by d move it by at most |gradient| |d| (Cauchy-Schwarz), so its bound is that, with the
    emulation's logits error for d."""
    images, labels, before, _, _ = step_case
    exact = oracle.forward(before, images)
    emulated_logits = oracle.forward(before, images, precision="bf16")
    probabilities = np.exp(exact - exact.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    want_eval_loss = float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))
    d_logits = (probabilities - np.eye(exact.shape[1])[labels]) / len(labels)
    eval_bound = ROUNDING_MARGIN * np.linalg.norm(d_logits) * np.linalg.norm(emulated_logits - exact)

    trainer = backend.Trainer(lr=LR, device="cpu", precision="bf16")
    trainer.import_weights(before)
    x, y = trainer.to_batch(images, labels)
    eval_sum, _ = trainer.eval_step(x, y)
    loss_sum, _ = trainer.train_step(x, y)
    eval_loss, loss = (value / len(labels) for value in trainer.to_host([eval_sum, loss_sum]))
    eval_gap = abs(eval_loss - want_eval_loss)
    assert eval_gap <= eval_bound, f"the bf16 eval loss is {eval_gap:.2e} from the exact one; bound {eval_bound:.2e}"

    after = trainer.export_weights()
    assert all(value.dtype == np.float32 for value in after.values()), "master weights and statistics are float32"
    emulated = _relative_gaps(*oracle.sgd_step(before, images, labels, LR, precision="bf16"), step_case)
    gaps = _relative_gaps(loss, after, step_case)
    for key, value in gaps.items():
        assert value <= ROUNDING_MARGIN * emulated[key], (
            f"{key}: the bf16 step is {value:.2e} from the exact one, the oracle's bf16 emulation {emulated[key]:.2e}")
    # And it is bf16 arithmetic, not float32: float32 stays within 1e-5 of the exact update.
    assert gaps["update"] > 0.1 * emulated["update"], gaps


def test_the_cpu_computes_the_same_step_with_and_without_determinism(backend, equality_case):
    """deterministic=False only frees a GPU's kernel choice; on the CPU the step is the same."""
    case, fp32_step = equality_case
    loss, after, trainer = _backend_step(backend, "fp32", case, arch=SMALL_ARCH, deterministic=False)
    assert trainer.deterministic is False
    assert loss == fp32_step[0]
    for name in after:
        np.testing.assert_array_equal(after[name], fp32_step[1][name], err_msg=name)
