"""Write tests/expected/torch_epoch1/: the first epoch of a two-epoch run trained with PyTorch.

    python tools/make_torch_checkpoint.py            # rewrite it (needs torch)
    python tools/make_torch_checkpoint.py --check    # exit 1 unless a fresh run is within 1e-5 of it

Every other backend resumes this run for its second epoch (``tests/test_recipe.py``) and must end
where the oracle's continuation ends: a run moves between frameworks mid-training, optimizer state
and schedule included. The recipe has every option of :mod:`common.optim` on (Nesterov momentum,
weight decay, label smoothing, a one-cycle rate that changes every step) and the training
transforms; the network and data are small (``tests/helpers.py``'s SMALL_ARCH, 64 synthetic
images at 28 x 28, batches of 16: four steps per epoch). Regenerate after a deliberate change to
the checkpoint's layout, the recipe's math, the initial weights or the data, and commit it.

The checked-in checkpoint is still an older run's ``checkpoint.npz`` (the format before
safetensors), on purpose: every backend resuming it is also the test that a run directory from
before safetensors resumes. Rewriting it writes ``checkpoint.safetensors`` and drops that test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from common.training import CHECKPOINT_NAME, METRICS_NAME, find_checkpoint  # noqa: E402

from helpers import SMALL_ARCH  # noqa: E402

OUTPUT = os.path.join(REPO, "tests", "expected", "torch_epoch1")
#: The run: two epochs, of which the file holds the first.
RUN = dict(arch=SMALL_ARCH, epochs=2, batch_size=16, lr=0.05, resize=None, subset=64, test_subset=32, seed=0,
           momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1, schedule="onecycle",
           transforms=(("crop_padding", 2), ("flip", True)))


def first_epoch(out_dir) -> None:
    """Train RUN with PyTorch into ``out_dir`` and keep the directory as it was after epoch 1."""
    import resnet_torch

    with tempfile.TemporaryDirectory() as scratch:
        def keep_epoch_one(line):
            if "epoch 2/" in line:  # printed before epoch 2's checkpoint replaces epoch 1's
                os.makedirs(out_dir, exist_ok=True)
                for name in (CHECKPOINT_NAME, METRICS_NAME):
                    shutil.copy(os.path.join(scratch, "run", name), os.path.join(out_dir, name))

        resnet_torch.train(out_dir=os.path.join(scratch, "run"), synthetic=True, device="cpu", print_fn=keep_epoch_one,
                           **RUN)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare a fresh run with the checked-in one")
    args = parser.parse_args(argv)
    if not args.check:
        shutil.rmtree(OUTPUT, ignore_errors=True)
        first_epoch(OUTPUT)
        print(f"wrote {OUTPUT}")
        return 0
    import numpy as np

    from common.weights import load_weights

    with tempfile.TemporaryDirectory() as scratch:
        first_epoch(scratch)
        fresh = load_weights(os.path.join(scratch, CHECKPOINT_NAME), SMALL_ARCH)
    kept = load_weights(find_checkpoint(OUTPUT), SMALL_ARCH)
    worst = max(float(np.max(np.abs(fresh[k] - kept[k]))) for k in kept)
    print(f"largest difference {worst:.2e}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
