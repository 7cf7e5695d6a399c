"""Training in every backend: the same steps, learning, checkpoints, resume, divergence."""
import json
import re

import numpy as np
import pytest

from common import oracle
from common.data import BatchLoader, fashion_mnist_loaders, synthetic_fashion_mnist
from common.hparams import TrainConfig
from common.naming import is_buffer
from common.training import CHECKPOINT_NAME, METRICS_NAME, TrainingDiverged, fit
from common.weights import init_weights, jittered_weights, load_weights, read_metadata

from helpers import SMALL_ARCH, data_source, load_expected

# Small enough for 2 CPU cores, large enough to learn something in one epoch.
SMALL = dict(epochs=1, batch_size=32, lr=0.05, resize=None, subset=480, test_subset=200, seed=0)


def _first_steps():
    expected = load_expected()["first_steps"]
    config = expected["config"]
    images, labels = synthetic_fashion_mnist(config["num_examples"], seed=config["seed"])
    loader = BatchLoader(images, labels, batch_size=config["batch_size"], shuffle=True, seed=config["seed"])
    return expected, config, loader


def _update_norm(after, before) -> float:
    return float(np.sqrt(sum(np.sum((after[k].astype(np.float64) - before[k]) ** 2) for k in before)))


@pytest.fixture(scope="module")
def resnet18_trainer(backend):
    """One ResNet-18 Trainer, shared by the tests below that import their own weights and set their
    own lr: TensorFlow compiles each new Trainer's steps anew (about 15 s under XLA on 2 cores).
    A Trainer that keeps training after ``import_weights`` is what ``--resume`` relies on too."""
    return backend.Trainer()


def _trainer_at(trainer, lr, weights):
    trainer.lr = lr
    trainer.import_weights(weights)
    return trainer


def test_first_ten_steps_are_the_oracles_steps(resnet18_trainer):
    """Same start, same steps: each of the first 10 SGD steps is the oracle's step.

    At the chapter's lr 0.05 from Xavier-initialised weights the steps are ill-conditioned:
    even in the float64 oracle, weights jittered by 1e-6 (float32 rounding's size) change
    the update of step 2 by about 1e-2 of its size, and a free-running trajectory by 1e-2
    in the loss by step 3. So no two implementations can follow one trajectory for 10 steps,
    and how close one step can come depends on the step. What is checked: the first two
    free-running losses equal the checked-in ones within 1e-3, and at every step the backend
    computes, from its current weights, the oracle's loss (within 1e-3) and the oracle's
    update, within 1e-3 of its size or, where the step is ill-conditioned, within 4 times
    what 1e-6 of jitter in the weights changes in the oracle's own update.
    """
    expected, config, loader = _first_steps()
    trainer = _trainer_at(resnet18_trainer, config["lr"], init_weights("resnet18", config["seed"]))
    losses = []
    for step, (images, labels) in enumerate(loader, start=1):
        before = trainer.export_weights()
        want_loss, want_after = oracle.sgd_step(before, images, labels, config["lr"])
        loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
        losses.append(trainer.to_host([loss_sum])[0] / len(labels))
        after = trainer.export_weights()
        assert losses[-1] == pytest.approx(want_loss, abs=1e-3), f"step {step}"
        size = _update_norm(after, before)
        gap = _update_norm(after, want_after) / size
        if gap > 1e-3:
            _, jittered_after = oracle.sgd_step(jittered_weights(before, 1e-6, step), images, labels, config["lr"])
            sensitivity = _update_norm(jittered_after, want_after) / size
            assert gap <= 4 * sensitivity, (f"step {step}: update differs by {gap:.2e} of its size; 1e-6 of jitter "
                                            f"moves the oracle's by {sensitivity:.2e}")
    assert len(losses) == config["steps"] == len(expected["losses"])
    agree = expected["free_running_steps_that_agree"]
    np.testing.assert_allclose(losses[:agree], expected["losses"][:agree], rtol=0, atol=1e-3)


@pytest.mark.parametrize("fast_paths", ["fast", "native"])
def test_a_training_step_is_the_oracles_on_either_side_of_every_fast_path(backend, monkeypatch, fast_paths):
    # RESNET_FAST_PATHS=fast takes every fast path (XLA in TensorFlow), native none (TensorFlow's
    # graph executor with its fused BatchNorm): an autotuned run mixes the two, layer by layer.
    monkeypatch.setenv("RESNET_FAST_PATHS", fast_paths)
    expected, config, loader = _first_steps()
    images, labels = next(iter(loader))
    trainer = backend.Trainer(lr=config["lr"])
    before = init_weights("resnet18", config["seed"])
    trainer.import_weights(before)
    want_loss, want_after = oracle.sgd_step(before, images, labels, config["lr"])
    loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
    assert trainer.to_host([loss_sum])[0] / len(labels) == pytest.approx(want_loss, abs=1e-3)
    after = trainer.export_weights()
    assert _update_norm(after, want_after) <= 1e-3 * _update_norm(after, before)


#: Learning, checked where the outcome does not depend on rounding: plain SGD on one fixed
#: batch drives its loss from about 3.5 to about 0.002 within 30 steps from any start near the
#: initial weights (tools/learning_stability.py --one-batch measures it), whereas what one
#: epoch of the chapter's recipe reaches on held-out data changes by tens of per cent with
#: 1e-6 of jitter in the initial weights.
FIT_ONE_BATCH = dict(batch_size=64, lr=0.01, steps=30, jitters=(0, 1, 2), loss_below=0.05)


def test_sgd_fits_one_batch_from_any_rounding(backend):
    loader, _ = fashion_mnist_loaders(FIT_ONE_BATCH["batch_size"], subset=FIT_ONE_BATCH["batch_size"], test_subset=10,
                                      **data_source())
    images, labels = next(iter(loader))
    trainer = backend.Trainer(lr=FIT_ONE_BATCH["lr"])
    initial = init_weights("resnet18", 0)
    for jitter in FIT_ONE_BATCH["jitters"]:
        trainer.import_weights(jittered_weights(initial, 1e-6, jitter) if jitter else initial)
        x, y = trainer.to_batch(images, labels)
        losses = [trainer.train_step(x, y)[0] for _ in range(FIT_ONE_BATCH["steps"])]
        first, last = (value / len(labels) for value in trainer.to_host([losses[0], losses[-1]]))
        assert first > 2.0 and last < FIT_ONE_BATCH["loss_below"], f"jitter {jitter}: loss {first:.4f} -> {last:.4f}"


def _late_loss(losses) -> float:
    """A run's mean loss over its second half of steps: what chaos decides, not the start."""
    return float(np.mean(losses[len(losses) // 2:]))


def test_seeds_spread_like_the_oracles(resnet18_trainer):
    """Past the first steps a run is decided by rounding, but the spread over seeds is not.

    For each of 10 seeds (initial weights and batch order), the mean loss of steps 5-8 at the
    chapter's lr; the backend's mean over seeds must agree with the oracle's within 4 standard
    errors of their difference (Welch). A backend that computed another function or took
    other steps (another lr, loss scale or BatchNorm update) would land far outside.
    """
    expected = load_expected()["seed_spread"]
    config = expected["config"]
    images, labels = synthetic_fashion_mnist(config["num_examples"], seed=config["data_seed"])
    ours = []
    for seed in config["seeds"]:
        trainer = _trainer_at(resnet18_trainer, config["lr"], init_weights(config["arch"], seed))
        loader = BatchLoader(images, labels, batch_size=config["batch_size"], shuffle=True, seed=seed)
        losses = [trainer.train_step(*trainer.to_batch(x, y))[0] for x, y in loader]
        ours.append(_late_loss([value / config["batch_size"] for value in trainer.to_host(losses)]))
    theirs = [_late_loss(losses) for losses in expected["losses"]]
    error = np.sqrt(np.var(ours, ddof=1) / len(ours) + np.var(theirs, ddof=1) / len(theirs))
    t = (np.mean(ours) - np.mean(theirs)) / error
    assert abs(t) <= 4, (f"late loss over seeds: {np.mean(ours):.3f} ± {np.std(ours, ddof=1):.3f} here, "
                         f"{np.mean(theirs):.3f} ± {np.std(theirs, ddof=1):.3f} in the oracle (t = {t:.2f})")


@pytest.fixture(scope="module")
def small_run(backend, tmp_path_factory):
    """One epoch on a small real subset when the data is present, else on synthetic data (the loop's
    network: what is checked is the files and what they say, not what ResNet-18 computes)."""
    out = tmp_path_factory.mktemp("run")
    source = data_source()
    data_dir, synthetic = source.get("data_dir"), source.get("synthetic", False)
    history = backend.train(out_dir=str(out), quiet=True, data_dir=data_dir, synthetic=synthetic, arch=SMALL_ARCH,
                            **SMALL)
    return history, out, data_dir, synthetic


def test_one_epoch_writes_its_files(backend, backend_name, small_run):
    # What the epoch learned is not asserted: one epoch at the chapter's lr is chaotic (see
    # FIT_ONE_BATCH); the files it writes and what they say are not.
    history, out, data_dir, synthetic = small_run
    assert [h["epoch"] for h in history] == [1]
    record = history[0]
    for key in ("train_loss", "test_loss"):
        assert np.isfinite(record[key]), key
    for key in ("train_acc", "test_acc"):
        assert 0 <= record[key] <= 1, key
    assert record["examples_per_sec"] > 0 and record["seconds"] > 0
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["backend"] == backend_name
    for key in ("framework", "device", "hyperparameters", "seed", "history", "wall_seconds", "python", "numpy"):
        assert key in metrics, key
    assert metrics["hyperparameters"]["lr"] == SMALL["lr"]
    assert metrics["history"] == history
    steps = -(-SMALL["subset"] // SMALL["batch_size"])
    assert len(metrics["step_losses"]) == steps and all(np.isfinite(metrics["step_losses"]))
    # The epoch's mean loss is the steps' losses weighted by batch size (all batches full here).
    assert np.mean(metrics["step_losses"]) == pytest.approx(record["train_loss"], rel=1e-6)
    state = read_metadata(out / CHECKPOINT_NAME)["train_state"]
    assert state["epoch"] == 1 and state["config"]["seed"] == 0 and state["backend"] == backend_name
    assert state["step_losses"] == metrics["step_losses"]
    load_weights(out / CHECKPOINT_NAME, SMALL_ARCH)  # the canonical format: loads in any backend


def test_checkpoint_evaluates_the_same_in_the_oracle(backend, small_run):
    """Weights trained here give the same test accuracy in another implementation.

    The NumPy oracle stands in for the other backends (each of which is checked against the
    oracle in its own environment), so a checkpoint moves between all three.
    """
    _, out, data_dir, synthetic = small_run
    weights = load_weights(out / CHECKPOINT_NAME, SMALL_ARCH)
    ours = backend.evaluate(weights=str(out / CHECKPOINT_NAME), resize=None, batch_size=100,
                            test_subset=SMALL["test_subset"], data_dir=data_dir, synthetic=synthetic)
    _, test_loader = fashion_mnist_loaders(100, resize=None, test_subset=SMALL["test_subset"], data_dir=data_dir,
                                           synthetic=synthetic)
    correct = total = 0
    for images, labels in test_loader:
        logits = oracle.forward(weights, images, training=False, arch=SMALL_ARCH)
        correct += int((logits.argmax(axis=1) == labels).sum())
        total += len(labels)
    assert total == ours["examples"] == SMALL["test_subset"]
    assert abs(ours["accuracy"] - correct / total) <= 0.001


@pytest.mark.graph_executor
def test_resume_ends_with_the_same_weights(backend, tmp_path):
    tiny = dict(SMALL, subset=64, test_subset=32, epochs=2, arch=SMALL_ARCH)
    backend.train(out_dir=str(tmp_path / "whole"), quiet=True, synthetic=True, **tiny)
    backend.train(out_dir=str(tmp_path / "split"), quiet=True, synthetic=True, **dict(tiny, epochs=1))
    history = backend.train(out_dir=str(tmp_path / "split"), resume=True, quiet=True, synthetic=True, **tiny)
    assert [h["epoch"] for h in history] == [1, 2]
    whole = load_weights(tmp_path / "whole" / CHECKPOINT_NAME, SMALL_ARCH)
    split = load_weights(tmp_path / "split" / CHECKPOINT_NAME, SMALL_ARCH)
    for name in whole:
        np.testing.assert_allclose(split[name], whole[name], rtol=0, atol=1e-6, err_msg=name)
    # Every step's loss survives the resume: two epochs of 4 steps, the same steps as the whole run's.
    whole_losses = json.loads((tmp_path / "whole" / METRICS_NAME).read_text())["step_losses"]
    split_losses = json.loads((tmp_path / "split" / METRICS_NAME).read_text())["step_losses"]
    assert len(split_losses) == len(whole_losses) == 4
    np.testing.assert_allclose(split_losses, whole_losses, rtol=1e-5)


class _PoisonedLoader:
    """A loader whose ``pass_``-th iteration (0-based: the epoch) has NaN images, in batch
    ``step`` only or, with ``step=None``, in every batch."""

    def __init__(self, loader, pass_, step=None):
        self.loader, self.poison_pass, self.poison_step, self.passes = loader, pass_, step, 0

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        poisoned = self.passes == self.poison_pass
        self.passes += 1
        for step, (images, labels) in enumerate(self.loader):
            if poisoned and self.poison_step in (None, step):
                images = np.full_like(images, np.nan)
            yield images, labels


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(resnet18_trainer, tmp_path):
    config = TrainConfig(**dict(SMALL, subset=96, test_subset=32, epochs=2))
    train_loader, test_loader = fashion_mnist_loaders(32, resize=None, subset=96, test_subset=32, synthetic=True)
    trainer = _trainer_at(resnet18_trainer, config.lr, init_weights("resnet18", 0))
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3.*last good checkpoint"):
        fit(trainer, _PoisonedLoader(train_loader, 1, 2), test_loader, config, out_dir=str(tmp_path), quiet=True)
    assert read_metadata(tmp_path / CHECKPOINT_NAME)["train_state"]["epoch"] == 1
    for name, value in load_weights(tmp_path / CHECKPOINT_NAME).items():
        assert np.all(np.isfinite(value)), name


def test_non_finite_test_loss_stops_and_keeps_the_last_good_checkpoint(resnet18_trainer, tmp_path):
    # A finite training loss does not make a usable network: the eval-mode forward can overflow alone.
    config = TrainConfig(**dict(SMALL, subset=64, test_subset=32, epochs=2))
    train_loader, test_loader = fashion_mnist_loaders(32, resize=None, subset=64, test_subset=32, synthetic=True)
    trainer = _trainer_at(resnet18_trainer, config.lr, init_weights("resnet18", 0))
    with pytest.raises(TrainingDiverged, match=r"test loss is nan after epoch 2.*last good checkpoint"):
        fit(trainer, train_loader, _PoisonedLoader(test_loader, 1), config, out_dir=str(tmp_path), quiet=True)
    assert read_metadata(tmp_path / CHECKPOINT_NAME)["train_state"]["epoch"] == 1
    assert json.loads((tmp_path / METRICS_NAME).read_text())["epochs_completed"] == 1


def test_evaluating_first_leaves_training_intact(backend):
    # Evaluation runs without autograd (inference mode); what it caches must still train.
    images, labels = oracle.step_batch(seed=2, batch_size=8, size=28)
    weights = init_weights(SMALL_ARCH, 0)
    trainer = backend.Trainer(arch=SMALL_ARCH, lr=0.05)
    trainer.import_weights(weights)
    trainer.to_host(list(trainer.eval_step(*trainer.to_batch(images, labels))))
    loss_sum, _ = trainer.train_step(*trainer.to_batch(images, labels))
    want_loss, want_after = oracle.sgd_step(weights, images, labels, 0.05, arch=SMALL_ARCH)
    assert trainer.to_host([loss_sum])[0] / len(labels) == pytest.approx(want_loss, abs=1e-3)
    after = trainer.export_weights()
    assert _update_norm(after, want_after) <= 1e-3 * _update_norm(after, weights)


@pytest.mark.graph_executor
def test_chapter_train_ch6_prints_the_chapter_lines(backend, capsys):
    train_iter, test_iter = backend.load_data_fashion_mnist(32, resize=None, subset=64, test_subset=64, synthetic=True)
    backend.train_ch6(backend.resnet18(), train_iter, test_iter, 1, 0.05, backend.try_gpu())
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[-2]), lines
    assert re.fullmatch(r"\d+\.\d examples/sec on .+", lines[-1]), lines


@pytest.mark.graph_executor
@pytest.mark.filterwarnings("ignore:All children of this Sequential")  # Gluon's advice on the chapter's nn.Sequential
def test_the_chapters_training_cell_runs(backend, chapter, capsys):
    # The chapter's own network (tests/chapter_<backend>.py) through d2l.train_ch6, at 28 x 28 on 64 synthetic images.
    net, history = chapter.training_cell(resize=None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("training on") and re.fullmatch(r"\d+\.\d examples/sec on .+", lines[-1]), lines
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert list(backend.export_weights(net)) == list(init_weights("resnet18", 0))


def test_gradients_cover_exactly_the_trainable_parameters(backend):
    net = backend.resnet18()
    images, labels = oracle.step_batch(seed=1, batch_size=4, size=32)
    _, gradients = backend.loss_and_gradients(net, images, labels)
    names = [n for n in backend.export_weights(net) if not is_buffer(n)]
    assert sorted(gradients) == sorted(names)


class _Recorded:
    """A toy transform (registered by the test that uses it): halves the images and records each
    batch it sees, so the test sees what reached the training loop."""

    def __init__(self, value, seen):
        self.value, self.seen = value, seen

    def __call__(self, batch, rng):
        self.seen.append((len(batch.images), batch.global_size))
        return batch.replace(images=batch.images * np.float32(0.5))


@pytest.mark.graph_executor
def test_a_registered_transform_reaches_the_run_metrics_and_resume(backend, tmp_path, monkeypatch):
    """A transform option (common.data.TRANSFORM_OPTIONS) goes from the command line to the training
    batches (not the test batches), into metrics.json, and --resume refuses a run asked with another."""
    from common.cli import main
    from common.data import TRANSFORM_OPTIONS, TransformOption

    seen = []
    monkeypatch.setitem(TRANSFORM_OPTIONS, "halve", TransformOption(
        "halve", float, "halve the images (a test's)", lambda value: _Recorded(value, seen)))
    out = tmp_path / "run"
    args = ["train", "--backend", backend.Trainer.backend, "--synthetic", "--quiet", "--out", str(out), "--arch",
            SMALL_ARCH, "--resize", "none", "--epochs", "1", "--batch-size", "16", "--subset", "32",
            "--test-subset", "16"]
    assert main(args + ["--halve", "2"]) == 0
    assert seen == [(16, 16), (16, 16)]  # the two training batches, none of the test set's
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["hyperparameters"]["transforms"] == [["halve", 2.0]]
    assert main(args + ["--epochs", "2", "--resume"]) == 1  # asked without the transform: refused
    assert main(args + ["--epochs", "2", "--resume", "--halve", "2"]) == 0
    assert len(seen) == 4
