"""Recipes beyond the book's (issue 23): the optimizer, its schedule, the loss and the evaluation's
views, defined once in :mod:`common.optim` and the oracle, computed by every backend's own
framework objects; the optimizer's state in checkpoints, resumed bit for bit and across backends."""
import json
import os
import sys

import numpy as np
import pytest

from common import oracle
from common.data import DataConfig, build_transforms, fashion_mnist_loader, synthetic_fashion_mnist
from common.hparams import PRESETS, TrainConfig
from common.optim import (
    MOMENTUM_PREFIX,
    ONECYCLE_DIV_FACTOR,
    ONECYCLE_FINAL_DIV_FACTOR,
    STEP_STATE,
    WARMUP_START_FACTOR,
    Recipe,
    Schedule,
    chapter_recipe,
)
from common.training import CHECKPOINT_NAME, METRICS_NAME, CheckpointError, find_checkpoint
from common.weights import init_weights, load_weights, read_optimizer_state

from helpers import EXPECTED_DIR, SMALL_ARCH

# ------------------------------------------------------------------ the math, framework-free


def test_the_schedules_start_peak_and_end_where_pytorch_puts_them():
    cosine = Schedule("cosine", 0.1, total_steps=100, warmup_steps=10)
    assert cosine.lr_at(0) == pytest.approx(0.1 * WARMUP_START_FACTOR)
    assert cosine.lr_at(5) == pytest.approx(0.1 * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) / 2))
    assert cosine.lr_at(10) == pytest.approx(0.1)
    assert cosine.lr_at(55) == pytest.approx(0.05)
    assert 0 < cosine.lr_at(99) < 1e-4 and cosine.lr_at(100) == pytest.approx(0, abs=1e-18)
    onecycle = Schedule("onecycle", 0.1, total_steps=100, warmup_steps=29)
    assert onecycle.lr_at(0) == pytest.approx(0.1 / ONECYCLE_DIV_FACTOR)
    assert onecycle.lr_at(29) == pytest.approx(0.1)
    assert onecycle.lr_at(99) == pytest.approx(0.1 / ONECYCLE_DIV_FACTOR / ONECYCLE_FINAL_DIV_FACTOR)
    assert onecycle.onecycle_pct_start == pytest.approx(0.3)
    step = Schedule("step", 0.1, total_steps=100, milestones=(50, 75), gamma=0.1)
    assert [step.lr_at(k) for k in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert Schedule("constant", 0.05, 10).rates() == [0.05] * 10


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="linear"), "unknown schedule 'linear'"),
    (dict(kind="constant", warmup_steps=3), "warm-up belongs to the cosine and onecycle"),
    (dict(kind="cosine", total_steps=5, warmup_steps=5), "must be shorter than the training"),
    (dict(kind="onecycle", total_steps=2, warmup_steps=1), "needs at least 3 steps, the run has 2; train longer"),
    (dict(kind="onecycle", total_steps=10, warmup_steps=9), "rise must take 1 to 8 of the 10 steps"),
    (dict(kind="step", total_steps=10, milestones=(5, 3)), "increasing"),
    (dict(kind="step", total_steps=10, milestones=(5,), gamma=2.0), "gamma must lie in"),
])
def test_a_schedule_that_cannot_run_is_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        Schedule(**{"lr": 0.1, "total_steps": 10, **kwargs})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum=1.0), "momentum must lie in"),
    (dict(nesterov=True), "Nesterov momentum needs a momentum"),
    (dict(weight_decay=-1e-4), "weight decay"),
    (dict(label_smoothing=1.0), "label smoothing"),
    (dict(tta="crop"), "unknown test-time augmentation"),
])
def test_a_recipe_that_cannot_run_is_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**kwargs)


def test_a_config_turns_epochs_into_steps():
    config = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1.5)
    assert config.recipe(20).schedule == Schedule("cosine", 0.05, 200, 30)
    step = TrainConfig(epochs=8, schedule="step").recipe(10).schedule
    assert step.milestones == (40, 60)  # half and three quarters
    assert TrainConfig(epochs=8, schedule="step", milestones=(3,)).recipe(10).schedule.milestones == (30,)
    onecycle = TrainConfig(epochs=10, schedule="onecycle").recipe(10).schedule
    assert onecycle.warmup_steps == 29 and onecycle.onecycle_pct_start == pytest.approx(0.3)
    assert TrainConfig().recipe(235).is_chapter and not TrainConfig(momentum=0.9).recipe(235).is_chapter
    with pytest.raises(ValueError, match="--warmup belongs to the cosine and onecycle"):
        TrainConfig(warmup_epochs=1).validate()
    with pytest.raises(ValueError, match="--milestones belong to the step schedule"):
        TrainConfig(milestones=(2,)).validate()
    with pytest.raises(ValueError, match="milestones must be epochs between 1 and 9"):
        TrainConfig(schedule="step", milestones=(12,)).validate()


def test_every_preset_is_a_valid_config():
    for name, config in PRESETS.items():
        config.validate()
        config.recipe(100)


def test_label_smoothing_is_pytorchs_and_its_gradient_is_the_losss():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 10)), rng.integers(0, 10, 5)
    loss, grad = oracle.softmax_cross_entropy(logits, labels, 0.1)
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    # PyTorch's definition: (1 - eps) * NLL + eps * (mean over classes of -log p).
    want = np.mean(0.9 * -log_p[np.arange(5), labels] + 0.1 * -log_p.mean(1))
    assert loss == pytest.approx(want, rel=1e-12)
    h, bump = 1e-6, np.zeros_like(logits)
    bump[2, 3] = h
    numeric = (oracle.softmax_cross_entropy(logits + bump, labels, 0.1)[0]
               - oracle.softmax_cross_entropy(logits - bump, labels, 0.1)[0]) / (2 * h)
    assert grad[2, 3] == pytest.approx(numeric, rel=1e-6)


def test_the_oracles_optimizer_step_with_the_chapters_recipe_is_its_sgd_step():
    weights = init_weights(SMALL_ARCH, 0)
    images, labels = oracle.step_batch(0, 4, 12)
    loss, after, state = oracle.optimizer_step(weights, images, labels, chapter_recipe(0.05), arch=SMALL_ARCH)
    want_loss, want_after = oracle.sgd_step(weights, images, labels, 0.05, arch=SMALL_ARCH)
    assert loss == want_loss and all(np.array_equal(after[k], want_after[k]) for k in want_after)
    assert state == {STEP_STATE: 1}


def test_the_oracles_momentum_is_pytorchs_with_a_changing_rate():
    """Two steps written out by hand: buf = m * buf + g + wd * w; w -= lr_k * (g + m * buf) (Nesterov)."""
    weights = init_weights(SMALL_ARCH, 0)
    images, labels = oracle.step_batch(1, 4, 12)
    recipe = Recipe(Schedule("step", 0.1, 2, milestones=(1,), gamma=0.5), momentum=0.9, nesterov=True,
                    weight_decay=1e-2)
    _, w1, s1 = oracle.optimizer_step(weights, images, labels, recipe, arch=SMALL_ARCH)
    _, w2, s2 = oracle.optimizer_step(w1, images, labels, recipe, s1, arch=SMALL_ARCH)
    name = "fc.weight"
    _, g0 = oracle.loss_and_gradients(weights, images, labels, arch=SMALL_ARCH)
    _, g1 = oracle.loss_and_gradients(w1, images, labels, arch=SMALL_ARCH)
    d0 = g0[name] + 1e-2 * weights[name].astype(np.float64)
    buf0 = d0
    np.testing.assert_allclose(w1[name], (weights[name] - 0.1 * (d0 + 0.9 * buf0)).astype(np.float32), rtol=1e-6)
    d1 = g1[name] + 1e-2 * w1[name].astype(np.float64)
    buf1 = 0.9 * buf0 + d1
    np.testing.assert_allclose(s2[MOMENTUM_PREFIX + name], buf1, rtol=1e-12)
    np.testing.assert_allclose(w2[name], (w1[name] - 0.05 * (d1 + 0.9 * buf1)).astype(np.float32), rtol=1e-6)
    assert s2[STEP_STATE] == 2


# ------------------------------------------------------------------ every backend's own objects

#: All options on, a rate that changes every step: what each backend's optimizer must equal.
STEPS = 10
RECIPES = {
    "nesterov-onecycle": Recipe(Schedule("onecycle", 0.05, STEPS, warmup_steps=3), momentum=0.9, nesterov=True,
                                weight_decay=5e-4, label_smoothing=0.1),
    "momentum-cosine-warmup": Recipe(Schedule("cosine", 0.05, STEPS, warmup_steps=3), momentum=0.9,
                                     weight_decay=5e-4),
    "step": Recipe(Schedule("step", 0.05, STEPS, milestones=(2, 5, 8), gamma=0.5), momentum=0.5,
                   label_smoothing=0.2),
    "momentum-constant": Recipe(Schedule("constant", 0.05, STEPS), momentum=0.9, nesterov=True, weight_decay=5e-4),
}
BATCH, SIZE = 8, 16


def _batches(count, seed=0):
    images, labels = synthetic_fashion_mnist(BATCH * count, seed=seed)
    from common.data.transforms import resize_images
    images = resize_images(images, SIZE)
    return [(images[i * BATCH:(i + 1) * BATCH], labels[i * BATCH:(i + 1) * BATCH].astype(np.int64))
            for i in range(count)]


def _norm(arrays) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in arrays)))


@pytest.fixture(scope="module")
def trainers(backend):
    """One Trainer per recipe (TensorFlow and JAX compile each once)."""
    return {name: backend.Trainer(arch=SMALL_ARCH, recipe=recipe) for name, recipe in RECIPES.items()}


@pytest.mark.parametrize("name", list(RECIPES))
def test_ten_steps_are_the_oracles_with_every_option_on(trainers, name):
    """At every step, from the backend's own weights and optimizer state, the oracle's step: the
    loss, the rate, the new weights and the new momentum buffers (within 3e-4 of the update's and
    1e-4 of the buffer's size), ten steps of a rate that changes every step."""
    trainer, recipe = trainers[name], RECIPES[name]
    trainer.import_weights(init_weights(SMALL_ARCH, 0))
    trainer.import_optimizer_state({STEP_STATE: np.int64(0)})
    for step, (images, labels) in enumerate(_batches(STEPS), start=0):
        before, state = trainer.export_weights(), trainer.export_optimizer_state()
        assert int(state[STEP_STATE]) == step
        assert trainer.lr == pytest.approx(recipe.schedule.lr_at(step), rel=1e-6), f"step {step}: rate"
        want_loss, want_after, want_state = oracle.optimizer_step(before, images, labels, recipe, state,
                                                                  arch=SMALL_ARCH)
        loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
        assert trainer.to_host([loss_sum])[0] / BATCH == pytest.approx(want_loss, abs=1e-4), f"step {step}: loss"
        after, got_state = trainer.export_weights(), trainer.export_optimizer_state()
        update = _norm(after[k] - before[k].astype(np.float64) for k in before)
        gap = _norm(after[k].astype(np.float64) - want_after[k] for k in before)
        # Typically 1e-6; 1e-4 where a max-pool window's two largest values lie closer than
        # float32 resolves, which routes one gradient differently (seen once, mx at step 4).
        assert gap <= 3e-4 * update, f"step {step}: the update differs by {gap / update:.1e} of its size"
        assert int(got_state[STEP_STATE]) == step + 1
        buffers = [k for k in want_state if k.startswith(MOMENTUM_PREFIX)]
        assert sorted(buffers) == sorted(k for k in got_state if k.startswith(MOMENTUM_PREFIX))
        if buffers:
            size = _norm(want_state[k] for k in buffers)
            assert _norm(got_state[k] - want_state[k] for k in buffers) <= 1e-4 * size, f"step {step}: buffers"


@pytest.mark.parametrize("name", ["momentum-cosine-warmup", "momentum-constant"])
def test_resuming_from_the_exported_state_is_bit_identical(backend, trainers, name):
    """Six steps straight, or three, export, a new Trainer, import, three: the same bits."""
    recipe = RECIPES[name]
    batches = _batches(6, seed=1)
    whole = trainers[name]
    whole.import_weights(init_weights(SMALL_ARCH, 1))
    whole.import_optimizer_state({STEP_STATE: np.int64(0)})
    for images, labels in batches:
        whole.train_step(*whole.to_batch(images, labels))
    first = backend.Trainer(arch=SMALL_ARCH, recipe=recipe)
    first.import_weights(init_weights(SMALL_ARCH, 1))
    for images, labels in batches[:3]:
        first.train_step(*first.to_batch(images, labels))
    weights, state = first.export_weights(), first.export_optimizer_state()
    second = backend.Trainer(arch=SMALL_ARCH, recipe=recipe)
    second.import_weights(weights)
    second.import_optimizer_state(state)
    for images, labels in batches[3:]:
        second.train_step(*second.to_batch(images, labels))
    want, got = whole.export_weights(), second.export_weights()
    assert all(np.array_equal(want[k], got[k]) for k in want), [k for k in want if not np.array_equal(want[k], got[k])]
    want_state, got_state = whole.export_optimizer_state(), second.export_optimizer_state()
    assert all(np.array_equal(want_state[k], got_state[k]) for k in want_state)


def test_flipped_test_views_are_the_oracles(backend):
    weights = init_weights(SMALL_ARCH, 2)
    images, labels = _batches(1, seed=2)[0]
    trainer = backend.Trainer(arch=SMALL_ARCH, recipe=chapter_recipe().replace(tta="flip"))
    trainer.import_weights(weights)
    loss_sum, correct = trainer.to_host(list(trainer.eval_step(*trainer.to_batch(images, labels))))
    logits = oracle.evaluation_logits(weights, images, "flip", arch=SMALL_ARCH)
    plain = oracle.evaluation_logits(weights, images, "none", arch=SMALL_ARCH)
    assert not np.allclose(logits, plain, atol=1e-3)  # the second view changes something
    want_loss, _ = oracle.softmax_cross_entropy(logits, labels)
    assert loss_sum / BATCH == pytest.approx(want_loss, abs=1e-4)
    assert correct == int(np.sum(logits.argmax(1) == labels))


# ------------------------------------------------------------------ checkpoints and the command line

TINY = dict(arch=SMALL_ARCH, epochs=2, batch_size=16, lr=0.05, resize=None, subset=64, test_subset=32, seed=0,
            momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1, schedule="onecycle")


def _copy_run(source, target):
    """A run directory's checkpoint (either format) and metrics.json, copied into ``target``."""
    import shutil

    os.makedirs(target)
    for path in (find_checkpoint(source), os.path.join(source, METRICS_NAME)):
        shutil.copy(path, target)


@pytest.mark.graph_executor
def test_a_checkpoint_holds_the_optimizer_state_and_resume_continues_it(backend, tmp_path):
    """A run of two epochs; its directory as it was after epoch 1 (copied when epoch 2's line is
    printed, before epoch 2's checkpoint replaces it) resumed: the same bits at the end."""
    whole, split = tmp_path / "whole", tmp_path / "split"

    def print_fn(line):
        if "epoch 2/" in line:
            _copy_run(whole, split)

    backend.train(out_dir=str(whole), synthetic=True, print_fn=print_fn, **TINY)
    assert read_optimizer_state(split / CHECKPOINT_NAME)[STEP_STATE] == 4
    history = backend.train(out_dir=str(split), resume=True, quiet=True, synthetic=True, **TINY)
    assert [h["epoch"] for h in history] == [1, 2]
    want = load_weights(whole / CHECKPOINT_NAME, SMALL_ARCH)
    got = load_weights(split / CHECKPOINT_NAME, SMALL_ARCH)
    assert all(np.array_equal(want[k], got[k]) for k in want), "resume is not bit-identical on the CPU"
    state = read_optimizer_state(whole / CHECKPOINT_NAME)
    assert int(state[STEP_STATE]) == 8 and state[MOMENTUM_PREFIX + "fc.weight"].dtype == np.float64
    metrics = json.loads((whole / METRICS_NAME).read_text())
    assert metrics["step_lrs"] == pytest.approx(TrainConfig(**TINY).recipe(4).schedule.rates())
    assert metrics["recipe"]["schedule"] == "onecycle" and metrics["hyperparameters"]["nesterov"] is True
    assert json.loads((split / METRICS_NAME).read_text())["step_lrs"] == metrics["step_lrs"]
    with pytest.raises(CheckpointError, match=r"momentum=0.9 \(now 0.5\)"):
        backend.train(out_dir=str(split), resume=True, quiet=True, synthetic=True, **dict(TINY, momentum=0.5))
    with pytest.raises(CheckpointError, match=r"epochs=2 \(now 3\)"):  # another schedule
        backend.train(out_dir=str(split), resume=True, quiet=True, synthetic=True, **dict(TINY, epochs=3))


# ------------------------------------------------------------------ a run that moves between frameworks

TORCH_EPOCH1 = os.path.join(EXPECTED_DIR, "torch_epoch1")
#: Its checkpoint: an older run's checkpoint.npz (issue 23's format), so every backend's resuming it
#: also proves that a run directory from before safetensors resumes (and writes safetensors).
TORCH_EPOCH1_CHECKPOINT = find_checkpoint(TORCH_EPOCH1)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(EXPECTED_DIR)), "tools"))


def _torch_run():
    from make_torch_checkpoint import RUN

    return RUN


def test_a_run_started_in_torch_resumes_here_as_the_oracle_continues_it(backend, tmp_path):
    """tests/expected/torch_epoch1 is epoch 1 of a two-epoch run trained with PyTorch (every
    option of the recipe on, crops and flips); this backend trains epoch 2 from it, optimizer
    state and schedule included, and ends where the oracle's epoch 2 from the same file ends."""
    run_config = _torch_run()
    metrics = json.loads(open(os.path.join(TORCH_EPOCH1, METRICS_NAME)).read())
    assert metrics["backend"] == "torch" and metrics["epochs_completed"] == 1
    run = tmp_path / "run"
    _copy_run(TORCH_EPOCH1, run)
    history = backend.train(out_dir=str(run), resume=True, quiet=True, synthetic=True, **run_config)
    assert [h["epoch"] for h in history] == [1, 2]

    config = TrainConfig(**run_config)
    start = load_weights(TORCH_EPOCH1_CHECKPOINT, SMALL_ARCH)
    state = read_optimizer_state(TORCH_EPOCH1_CHECKPOINT)
    loader = fashion_mnist_loader("train", DataConfig(
        config.batch_size, resize=config.resize, seed=config.seed, subset=config.subset, synthetic=True,
        transforms=build_transforms(config.transforms)))
    recipe = config.recipe(len(loader))
    loader.set_epoch(1)
    weights = start
    for images, labels in loader:
        _, weights, state = oracle.optimizer_step(weights, images, labels, recipe, state, arch=SMALL_ARCH)
    got = load_weights(run / CHECKPOINT_NAME, SMALL_ARCH)
    update = _norm(weights[k].astype(np.float64) - start[k] for k in start)
    gap = _norm(got[k].astype(np.float64) - weights[k] for k in start)
    assert gap <= 1e-3 * update, f"epoch 2 differs from the oracle's by {gap / update:.1e} of its update"
    got_state = read_optimizer_state(run / CHECKPOINT_NAME)
    assert int(got_state[STEP_STATE]) == int(state[STEP_STATE]) == 2 * len(loader)
    buffers = [k for k in state if k.startswith(MOMENTUM_PREFIX)]
    assert _norm(got_state[k] - state[k] for k in buffers) <= 1e-3 * _norm(state[k] for k in buffers)


@pytest.mark.backend("torch")
def test_the_checked_in_torch_epoch_is_what_torch_trains(tmp_path):
    from make_torch_checkpoint import first_epoch

    first_epoch(str(tmp_path))
    fresh = load_weights(tmp_path / CHECKPOINT_NAME, SMALL_ARCH)
    kept = load_weights(TORCH_EPOCH1_CHECKPOINT, SMALL_ARCH)
    assert max(float(np.max(np.abs(fresh[k] - kept[k]))) for k in kept) <= 1e-5
