"""TensorBoard scalars for a training run, the same tags from every backend.

``train --tensorboard [DIR]`` writes, after every epoch, one event per step and one per epoch
through `tensorboardX <https://github.com/lanpa/tensorboardX>`_ (no framework needed: the optional
extra ``resnet-fmnist[tensorboard]``), so that runs of all four backends overlay in one
``tensorboard --logdir``. Everything is logged against the **global step** (the number of SGD
updates done), the epoch scalars at the step that ends their epoch, as Lightning does: a resumed
run continues the same axis, and its first events purge (TensorBoard's ``purge_step``) whatever a
killed run had logged after its last checkpoint.

The values are the ones ``metrics.json`` records (``step_losses``, ``step_lrs``, ``history``),
written by the loop in :mod:`common.training`, never by a backend.
"""
from __future__ import annotations

import os
import time
from typing import Mapping, Optional, Sequence

__all__ = ["STEP_TAGS", "EPOCH_TAGS", "TAGS", "TensorBoardError", "TensorBoardLog"]

#: Per step: the step's mean training loss and its learning rate.
STEP_TAGS = {"loss": "train/step_loss", "lr": "train/lr"}
#: Per epoch (at its last step): the ``history`` entry of :func:`common.training.fit` under these tags.
EPOCH_TAGS = {
    "train_loss": "epoch/train_loss",
    "train_acc": "epoch/train_accuracy",
    "test_loss": "epoch/test_loss",
    "test_acc": "epoch/test_accuracy",
    "examples_per_sec": "epoch/examples_per_sec",
}
#: Every tag a run writes.
TAGS = tuple(STEP_TAGS.values()) + tuple(EPOCH_TAGS.values())


class TensorBoardError(RuntimeError):
    """TensorBoard logging that cannot start (one line: what to install or which folder)."""


class TensorBoardLog:
    """Event files in ``logdir`` for one run (worker 0's); ``steps_done`` updates came before it
    (a resumed run), so the first step it logs is ``steps_done + 1``."""

    def __init__(self, logdir, steps_done: int = 0):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise TensorBoardError("--tensorboard needs tensorboardX: pip install 'resnet-fmnist[tensorboard]'") \
                from None
        logdir = os.fspath(logdir)
        if os.path.exists(logdir) and not os.path.isdir(logdir):
            raise TensorBoardError(f"--tensorboard {logdir}: is a file, not a folder; choose another folder")
        # A resumed run drops what a killed run logged beyond its checkpoint.
        purge = steps_done + 1 if steps_done else None
        # Files are named by the second they were opened in; the nanoseconds after it keep two runs
        # within one second apart (a resume right after a failure) and in order.
        self.writer = SummaryWriter(logdir=logdir, purge_step=purge, flush_secs=60,
                                    filename_suffix=f".{time.time_ns() % 10**9:09d}")
        self.logdir = logdir

    def epoch(self, first_step: int, step_losses: Sequence[float], step_lrs: Sequence[float],
              record: Mapping[str, float]) -> None:
        """One epoch: its steps ``first_step + 1 ..`` (their losses and rates) and its ``record``."""
        if len(step_losses) != len(step_lrs):
            raise ValueError(f"{len(step_losses)} step losses but {len(step_lrs)} learning rates")
        for offset, (loss, lr) in enumerate(zip(step_losses, step_lrs), start=1):
            self.writer.add_scalar(STEP_TAGS["loss"], float(loss), first_step + offset)
            self.writer.add_scalar(STEP_TAGS["lr"], float(lr), first_step + offset)
        last = first_step + len(step_losses)
        for key, tag in EPOCH_TAGS.items():
            self.writer.add_scalar(tag, float(record[key]), last)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_log(logdir: Optional[str], steps_done: int = 0) -> Optional[TensorBoardLog]:
    """A :class:`TensorBoardLog` for ``logdir``, or None when there is none to write."""
    return None if logdir is None else TensorBoardLog(logdir, steps_done)
