"""``train --tensorboard``: the run's scalars under the same tags in every backend, read back with
TensorBoard's own reader (``EventAccumulator``), equal to what metrics.json records."""
import json
import os
import sys

import numpy as np
import pytest

from common.cli import main
from common.tensorboard import EPOCH_TAGS, STEP_TAGS, TAGS

from helpers import SMALL_ARCH

#: In tf, these run on TensorFlow's graph executor (tests/conftest.py): they test the loop's logging.
pytestmark = pytest.mark.graph_executor

#: 48 images in batches of 16: 3 steps an epoch.
TINY = ["--synthetic", "--batch-size", "16", "--resize", "none", "--subset", "48", "--test-subset", "16", "--quiet",
        "--arch", SMALL_ARCH, "--momentum", "0.9"]
#: A rate that changes every step (a run with it resumes only with its own number of epochs).
COSINE = ["--schedule", "cosine"]


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _train(capsys, backend_name, out, *extra):
    code = main(["train", "--backend", backend_name, "--out", str(out), *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 0, err


def _assert_matches_metrics(scalars, metrics, rate_moves=True):
    assert sorted(scalars) == sorted(TAGS)
    steps = len(metrics["step_losses"])
    assert [step for step, _ in scalars[STEP_TAGS["loss"]]] == list(range(1, steps + 1))
    # TensorBoard keeps float32 scalars.
    np.testing.assert_allclose([v for _, v in scalars[STEP_TAGS["loss"]]], metrics["step_losses"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars[STEP_TAGS["lr"]]], metrics["step_lrs"], rtol=1e-6)
    if rate_moves:  # each step's own rate was checked
        assert len(set(np.round(metrics["step_lrs"], 9))) == steps
    per_epoch = steps // len(metrics["history"])
    for key, tag in EPOCH_TAGS.items():
        assert [step for step, _ in scalars[tag]] == [per_epoch * h["epoch"] for h in metrics["history"]], tag
        np.testing.assert_allclose([v for _, v in scalars[tag]], [h[key] for h in metrics["history"]], rtol=1e-6)


def test_tensorboard_holds_what_metrics_json_holds(capsys, tmp_path, backend_name):
    out = tmp_path / "run"
    _train(capsys, backend_name, out, "--epochs", "2", *COSINE, "--tensorboard")  # no folder: the run's tensorboard/
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["step_losses"]) == 6
    _assert_matches_metrics(_scalars(out / "tensorboard"), metrics)


def test_a_resumed_run_continues_the_steps(capsys, tmp_path, backend_name):
    out, logdir = tmp_path / "run", tmp_path / "tb"
    _train(capsys, backend_name, out, "--epochs", "1", "--tensorboard", str(logdir))
    _train(capsys, backend_name, out, "--epochs", "2", "--tensorboard", str(logdir), "--resume")
    assert len(os.listdir(logdir)) == 2  # one event file per process, read as one run
    metrics = json.loads((out / "metrics.json").read_text())
    _assert_matches_metrics(_scalars(logdir), metrics, rate_moves=False)


def test_bad_tensorboard_folder_is_one_line_and_writes_nothing(capsys, tmp_path, backend_name):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = tmp_path / "run"
    code = main(["train", "--backend", backend_name, "--out", str(out), *TINY, "--epochs", "1",
                 "--tensorboard", str(blocker)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and blocker.read_text() == "not a folder"


def test_missing_tensorboardx_is_one_line(capsys, tmp_path, backend_name, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    out = tmp_path / "run"
    code = main(["train", "--backend", backend_name, "--out", str(out), *TINY, "--epochs", "1", "--tensorboard"])
    err = capsys.readouterr().err
    assert code == 1 and "pip install 'resnet-fmnist[tensorboard]'" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_resumed_log_drops_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    from common.tensorboard import TensorBoardLog

    record = {"train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.5, "test_acc": 0.4, "examples_per_sec": 10.0}
    with TensorBoardLog(tmp_path) as log:  # epoch 1 (checkpointed), then epoch 2, whose checkpoint was never written
        log.epoch(0, [3.0, 2.0], [0.1, 0.1], record)
        log.epoch(2, [1.0, 0.5], [0.1, 0.1], record)
    with TensorBoardLog(tmp_path, steps_done=2) as log:  # the resumed run redoes epoch 2
        log.epoch(2, [1.5, 1.25], [0.1, 0.1], dict(record, test_acc=0.6))
    scalars = _scalars(tmp_path)
    assert scalars[STEP_TAGS["loss"]] == [(1, 3.0), (2, 2.0), (3, 1.5), (4, 1.25)]
    assert [step for step, _ in scalars[EPOCH_TAGS["test_acc"]]] == [2, 4]
    assert scalars[EPOCH_TAGS["test_acc"]][1][1] == pytest.approx(0.6)
