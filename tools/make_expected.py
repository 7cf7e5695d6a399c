"""Write tests/expected/training.json: the training numbers every backend must reproduce.

    python tools/make_expected.py            # rewrite the file
    python tools/make_expected.py --check    # exit 1 if the checked-in file is out of date

Runs with plain NumPy (no framework): the numbers come from the NumPy oracle
(:mod:`common.oracle`, float64), so no backend grades its own homework.

``one_step``
    One train-mode loss and the per-tensor gradient norms of ResNet-18 with the initial
    weights for seed 0 on ``oracle.step_batch(seed=0, batch_size=8, size=64)``; read by
    ``tests/test_model.py::test_one_training_step_matches_expected``. ``near_zero`` lists the
    convolution biases that feed a train-mode BatchNorm: their gradient is zero up to
    rounding, so tests compare them against the overall gradient norm only.
``seed_spread``
    The losses of the first 8 plain-SGD steps (lr 0.05, batch 32, 28 x 28) on
    ``synthetic_fashion_mnist(256, seed=0)`` for each of 10 seeds, the seed choosing the
    initial weights and the batch order. Past step 3 one run's losses are set by rounding,
    not by the computation, but their distribution over seeds is not:
    ``tests/test_training.py::test_seeds_spread_like_the_oracles`` holds a backend's to it.
``first_steps``
    The losses of the first 10 plain-SGD steps (lr 0.05, batch 32, 28 x 28) from the same
    initial weights on ``common.data.synthetic_fashion_mnist(320, seed=0)`` in the order of
    ``common.data.BatchLoader(..., batch_size=32, shuffle=True, seed=0)`` (epoch 0), for the
    cross-backend training test. Running statistics are updated at every step, as in training.
    The trajectory is chaotic (the loss jumps from 3.7 to 11 in two steps): float32 rounding
    changes it by 1e-2 at step 3, so the test compares the first
    ``free_running_steps_that_agree`` losses free-running and checks every step against the
    oracle started from the backend's own weights.

Regenerate after any change to the architecture, the initial weights, the oracle, the
synthetic data or the batch order, and commit the file with that change.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from common import oracle  # noqa: E402
from common.data import BatchLoader, synthetic_fashion_mnist  # noqa: E402
from common.files import atomic_write  # noqa: E402
from common.weights import init_weights  # noqa: E402

OUTPUT = os.path.join(REPO, "tests", "expected", "training.json")
ARCH = "resnet18"
REGENERATE = "python tools/make_expected.py"

ONE_STEP_BATCH = {"seed": 0, "batch_size": 8, "size": 64}
FIRST_STEPS = {
    "arch": ARCH,
    "data": "synthetic",
    "num_examples": 320,
    "seed": 0,
    "batch_size": 32,
    "size": 28,
    "lr": 0.05,
    "steps": 10,
    "description": (
        "seed is used three times: common.data.synthetic_fashion_mnist(num_examples, seed), "
        "common.data.BatchLoader(images, labels, batch_size, shuffle=True, seed=seed) (its first epoch) "
        "and common.weights.init_weights(arch, seed); plain SGD (no momentum, no weight decay) at lr, "
        "mean softmax cross-entropy, BatchNorm in train mode; losses[i] is the loss of step i before its update"
    ),
}


SEED_SPREAD = {
    "arch": ARCH,
    "data": "synthetic",
    "num_examples": 256,
    "data_seed": 0,
    "batch_size": 32,
    "size": 28,
    "lr": 0.05,
    "seeds": list(range(10)),
    "description": (
        "for each seed: init_weights(arch, seed), common.data.BatchLoader(synthetic_fashion_mnist(num_examples, "
        "data_seed), batch_size, shuffle=True, seed=seed) (its first epoch, num_examples / batch_size steps), "
        "plain SGD at lr; losses[seed][i] is the loss of step i before its update"
    ),
}

#: How many free-running losses any float32 implementation reproduces within 1e-3.
FREE_RUNNING_STEPS_THAT_AGREE = 2


def one_step() -> dict:
    weights = init_weights(ARCH, 0)
    images, labels = oracle.step_batch(**ONE_STEP_BATCH)
    loss, gradients = oracle.loss_and_gradients(weights, images, labels, arch=ARCH)
    norms = {name: float(np.linalg.norm(gradient)) for name, gradient in gradients.items()}
    total = math.sqrt(sum(norm ** 2 for norm in norms.values()))
    near_zero = oracle.batch_norm_fed_conv_biases(ARCH)
    for name in near_zero:
        if norms[name] > 1e-10 * total:
            raise RuntimeError(f"{name}: gradient norm {norms[name]:.3g} is not zero up to rounding "
                               f"(total {total:.3g})")
    return {
        "seed": 0,
        "batch": dict(ONE_STEP_BATCH),
        "loss": loss,
        "gradient_norms": norms,
        "total_gradient_norm": total,
        "near_zero": near_zero,
    }


def first_steps() -> dict:
    config = FIRST_STEPS
    images, labels = synthetic_fashion_mnist(config["num_examples"], config["seed"])
    loader = BatchLoader(images, labels, batch_size=config["batch_size"], shuffle=True, seed=config["seed"])
    weights = init_weights(config["arch"], config["seed"])
    losses = []
    for batch_images, batch_labels in loader:
        if len(losses) == config["steps"]:
            break
        if batch_images.shape[1:] != (1, config["size"], config["size"]):
            raise RuntimeError(f"BatchLoader gave images of shape {batch_images.shape}, expected (N, 1, 28, 28)")
        loss, weights = oracle.sgd_step(weights, batch_images, batch_labels, config["lr"], arch=config["arch"])
        losses.append(loss)
        print(f"  step {len(losses)}: loss {loss:.6f}", file=sys.stderr)
    if len(losses) != config["steps"]:
        raise RuntimeError(f"the loader gave {len(losses)} batches, {config['steps']} needed")
    return {
        "config": dict(config),
        "losses": losses,
        # From step 3 on, float32 rounding alone moves these losses by more than 1e-3 (the
        # oracle itself, with its initial weights rounded differently, moves by 5e-3 at step
        # 3 and by 1 at step 10), so only the first two are compared free-running; every
        # step is compared against the oracle from the backend's own weights instead.
        "free_running_steps_that_agree": FREE_RUNNING_STEPS_THAT_AGREE,
    }


def seed_spread() -> dict:
    config = SEED_SPREAD
    images, labels = synthetic_fashion_mnist(config["num_examples"], config["data_seed"])
    losses = []
    for seed in config["seeds"]:
        weights = init_weights(config["arch"], seed)
        losses.append([])
        for batch_images, batch_labels in BatchLoader(images, labels, batch_size=config["batch_size"], shuffle=True,
                                                      seed=seed):
            loss, weights = oracle.sgd_step(weights, batch_images, batch_labels, config["lr"], arch=config["arch"])
            losses[-1].append(loss)
        print(f"  seed {seed}: losses {' '.join(f'{loss:.3f}' for loss in losses[-1])}", file=sys.stderr)
    return {"config": dict(config), "losses": losses}


def expected() -> dict:
    return {
        "regenerate": f"{REGENERATE} (plain NumPy, about three minutes); see its docstring for what the numbers are",
        "one_step": one_step(),
        "first_steps": first_steps(),
        "seed_spread": seed_spread(),
    }


def _differences(old, new, path=""):
    """Paths where two JSON values differ beyond float64 rounding across BLAS libraries.

    The SGD losses amplify rounding from step to step: NumPy 1.23 and 2.x (different
    OpenBLAS builds) already differ by about 1e-8 relative at step 9, hence 1e-6.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        if sorted(old) != sorted(new):
            return [f"{path or '/'}: keys differ"]
        return [d for key in old for d in _differences(old[key], new[key], f"{path}/{key}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{path}/{i}")]
    if isinstance(old, float) and isinstance(new, float):
        # near-zero gradient norms are pure rounding (about 1e-14), hence the absolute floor
        return [] if math.isclose(old, new, rel_tol=1e-6, abs_tol=1e-10) else [f"{path}: {old!r} != {new!r}"]
    return [] if old == new else [f"{path}: {old!r} != {new!r}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in file instead of writing it")
    parser.add_argument("--output", default=OUTPUT, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    values = expected()
    if args.check:
        try:
            with open(args.output) as handle:
                old = json.load(handle)
        except (OSError, ValueError) as error:
            print(f"cannot read {args.output}: {error}; run {REGENERATE}", file=sys.stderr)
            return 1
        differences = _differences(old, values)
        for line in differences[:20]:
            print(line, file=sys.stderr)
        print(f"{args.output}: {'out of date, run ' + REGENERATE if differences else 'up to date'}", file=sys.stderr)
        return 1 if differences else 0
    text = json.dumps(values, indent=2, sort_keys=True) + "\n"
    atomic_write(args.output, lambda handle: handle.write(text.encode()))
    print(f"wrote {args.output} ({len(text)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
