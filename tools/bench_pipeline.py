"""How fast the data pipeline delivers batches, on one CPU core.

Times full epochs of the training loader (shuffled gather, uint8 -> float32, bilinear resize)
at each size, without a framework, and prints images/s. Issue 3 asks for at least 20,000
images/s at 96 x 96 on one core, far above what training consumes. Uses the real data when
it is found without downloading, the synthetic stand-in otherwise (or with --synthetic).

    python tools/bench_pipeline.py [--sizes 96 28] [--batch-size 256] [--epochs 3]
"""
import os

# One core: BLAS and OpenMP pools stay single-threaded (set before NumPy is imported), and the
# process is pinned to one CPU where the OS allows it.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common.data import BatchLoader, DataError, load_fashion_mnist, synthetic_fashion_mnist  # noqa: E402


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to CPU {core}"


def load_images(synthetic: bool):
    if not synthetic:
        try:
            return load_fashion_mnist("train", download=False) + ("real Fashion-MNIST",)
        except DataError as error:
            print(f"real data not found ({error}); using synthetic data", file=sys.stderr)
    return synthetic_fashion_mnist(60000) + ("synthetic data",)


def images_per_second(loader: BatchLoader, epochs: int):
    """Best epoch's images per wall-clock second and per CPU second of this process.

    The CPU-time figure is what one core delivers even when other processes share the
    machine (the wall-clock one then drops); the first epoch also warms caches and allocator.
    """
    best_wall = best_cpu = 0.0
    for _ in range(epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        count = sum(len(labels) for _, labels in loader)
        best_wall = max(best_wall, count / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, count / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 28], help="image sizes (28 = no resize)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per size; the best is reported")
    parser.add_argument("--synthetic", action="store_true",
                        help="use synthetic data even when the real data is present")
    args = parser.parse_args(argv)

    pinned = pin_to_one_core()
    images, labels, source = load_images(args.synthetic)
    print(f"{source}, {len(images):,} training images, batch {args.batch_size}, {pinned}, "
          f"NumPy {np.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}")
    for size in args.sizes:
        loader = BatchLoader(images, labels, args.batch_size, shuffle=True, seed=0,
                             resize=None if size == 28 else size)
        wall, cpu = images_per_second(loader, args.epochs)
        print(f"{size} x {size}: {wall:,.0f} images/s ({cpu:,.0f} per CPU second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
