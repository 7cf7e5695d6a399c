"""Is a training check stable under rounding? Train from slightly jittered initial weights.

Runs the same short training several times with one backend: once from the seed's initial
weights and once per jitter, each weight multiplied by ``1 + 1e-6 * N(0, 1)``
(:func:`common.weights.jittered_weights`: about what float32 rounding differences between
CPUs and libraries inject). Prints each run's outcome and the spread: a check on the outcome
of training is only sound where that spread is far smaller than the check's margin.

    python tools/learning_stability.py --backend torch              # one epoch, held-out data
    python tools/learning_stability.py --backend torch --one-batch  # SGD on one fixed batch

The first measures what ``tests/test_training.py`` no longer asserts (one epoch's test loss
and accuracy); the second what ``test_sgd_fits_one_batch_from_any_rounding`` does assert.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common.backend import load_backend  # noqa: E402
from common.data import fashion_mnist_loaders  # noqa: E402
from common.hparams import TrainConfig  # noqa: E402
from common.training import evaluate_loader, fit  # noqa: E402
from common.weights import init_weights, jittered_weights  # noqa: E402


def starts(initial, jitters):
    yield "unjittered", initial
    for jitter in range(1, jitters + 1):
        yield f"jitter {jitter}", jittered_weights(initial, 1e-6, jitter)


def one_epoch(backend, args, lr, data, initial):
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, resize=None, subset=args.subset,
                         test_subset=args.test_subset, seed=0)
    train_loader, test_loader = fashion_mnist_loaders(config.batch_size, resize=None, seed=0, subset=config.subset,
                                                      test_subset=config.test_subset, **data)
    trainer = backend.Trainer(lr=lr)
    trainer.import_weights(initial)
    before = evaluate_loader(trainer, test_loader)
    print(f"[{args.backend}] lr {lr}: before training: test loss {before['loss']:.4f}, acc {before['accuracy']:.3f}")
    outcomes = []
    for name, weights in starts(initial, args.jitters):
        trainer.import_weights(weights)
        last = fit(trainer, train_loader, test_loader, config, quiet=True, progress=False)[-1]
        outcomes.append((last["test_loss"], last["test_acc"]))
        print(f"[{args.backend}] lr {lr}: {name}: test loss {last['test_loss']:.4f}, test acc {last['test_acc']:.3f}",
              flush=True)
    return ("test loss", "test acc"), outcomes


def one_batch(backend, args, lr, data, initial):
    loader, _ = fashion_mnist_loaders(args.batch_size, subset=args.batch_size, test_subset=10, **data)
    images, labels = next(iter(loader))
    trainer = backend.Trainer(lr=lr)
    outcomes = []
    for name, weights in starts(initial, args.jitters):
        trainer.import_weights(weights)
        x, y = trainer.to_batch(images, labels)
        losses = [value / len(labels) for value in trainer.to_host([trainer.train_step(x, y)[0]
                                                                    for _ in range(args.steps)])]
        outcomes.append((losses[0], losses[-1]))
        print(f"[{args.backend}] lr {lr}: {name}: loss {losses[0]:.4f} -> {losses[-1]:.5f} after {args.steps} steps",
              flush=True)
    return ("first loss", "last loss"), outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--one-batch", action="store_true", help="SGD steps on one fixed batch instead of an epoch")
    parser.add_argument("--lr", type=float, nargs="+", default=None,
                        help="learning rates to try (default: 0.05 for an epoch, 0.01 for one batch)")
    parser.add_argument("--jitters", type=int, default=4, help="jittered starts besides the unjittered one")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="steps on the batch (--one-batch)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 for an epoch, 64 for one batch")
    parser.add_argument("--subset", type=int, default=480)
    parser.add_argument("--test-subset", type=int, default=200)
    parser.add_argument("--synthetic", action="store_true", help="the synthetic stand-in instead of Fashion-MNIST")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (64 if args.one_batch else 32)

    backend = load_backend(args.backend)
    data = dict(synthetic=True) if args.synthetic else {}
    initial = init_weights("resnet18", 0)
    for lr in args.lr or ([0.01] if args.one_batch else [0.05]):
        names, outcomes = (one_batch if args.one_batch else one_epoch)(backend, args, lr, data, initial)
        spreads = ", ".join(f"{name} {column.min():.4f}..{column.max():.4f} (std {column.std():.4f})"
                            for name, column in zip(names, np.array(outcomes).T))
        print(f"[{args.backend}] lr {lr}: over {len(outcomes)} starts: {spreads}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
