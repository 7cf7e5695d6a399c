"""``resnet-fmnist bench``: how fast one backend trains and infers, against its own matmul.

Everything is measured in one process so the ratios hold on a noisy shared machine:
training and inference examples/sec on one fixed batch (each timed step includes moving
the batch from host memory to the device, as in training), the achieved GFLOP/s (FLOPs
counted once, from the spec in :mod:`common.spec`, the same for every backend), the
framework's own fp32 matrix-multiply GFLOP/s, their ratio, and peak memory.
"""
from __future__ import annotations

import importlib
import platform
import resource
import statistics
import time

import numpy as np

from .backend import load_backend
from .spec import forward_flops_per_example, training_flops_per_example
from .weights import init_weights

__all__ = ["run_bench", "time_steps"]


def time_steps(trainer, step, images, labels, steps: int, warmup: int = 0) -> float:
    """Seconds per step of ``step`` (train_step or eval_step) over ``steps`` steps, after
    ``warmup`` untimed ones; the device is waited for once, at the end."""
    for _ in range(warmup):
        x, y = trainer.to_batch(images, labels)
        trainer.to_host(list(step(x, y)))
    start = time.perf_counter()
    values = None
    for _ in range(steps):
        x, y = trainer.to_batch(images, labels)
        values = step(x, y)
    trainer.to_host(list(values))  # wait for the device once, at the end
    return (time.perf_counter() - start) / steps


def _peak_memory_mb(trainer) -> float:
    value = trainer.peak_memory_bytes()
    if value:
        return value / 2**20
    # Linux reports ru_maxrss in KiB: the resident peak of this process (host memory).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(backend_name: str, *, batch_size: int = 64, resize=96, steps: int = 5, warmup: int = 2,
              rounds: int = 3, device=None, reference: bool = False, matmul_size: int = 2048) -> dict:
    """Benchmark one backend and return the figures as a JSON-ready dict.

    Training and inference are timed in ``rounds`` rounds of ``steps`` steps, each training
    round right after its own matmul measurement; the median round counts, and the share of
    matmul speed is the median of the rounds' ratios, so that a shared machine's slow spells
    (which slow both) stay out of it.

    ``reference=True`` times the chapter's own, unmodified code for the framework (the
    backend's ``reference`` module) in the same way, for the before/after comparison.
    """
    backend = load_backend(backend_name)
    size = resize or 28
    if reference:
        trainer = importlib.import_module(f"{backend.__name__}.reference").ReferenceTrainer(device=device)
    else:
        trainer = backend.Trainer(device=device)
        trainer.import_weights(init_weights("resnet18", 0))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch_size, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size).astype(np.int64)

    train_flops = batch_size * training_flops_per_example("resnet18", 1, size, size)
    infer_flops = batch_size * forward_flops_per_example("resnet18", 1, size, size)
    matmul_rounds, train_rounds, infer_rounds = [], [], []
    for i in range(rounds):
        matmul_rounds.append(trainer.matmul_gflops(matmul_size))
        train_rounds.append(time_steps(trainer, trainer.train_step, images, labels, steps, warmup if i == 0 else 0))
    for i in range(rounds):
        infer_rounds.append(time_steps(trainer, trainer.eval_step, images, labels, steps, warmup if i == 0 else 0))
    train_seconds, infer_seconds = statistics.median(train_rounds), statistics.median(infer_rounds)
    train_eps, infer_eps = batch_size / train_seconds, batch_size / infer_seconds
    train_gflops, infer_gflops = train_flops / train_seconds / 1e9, infer_flops / infer_seconds / 1e9
    matmul_gflops = statistics.median(matmul_rounds)
    fraction = statistics.median(train_flops / t / 1e9 / m for t, m in zip(train_rounds, matmul_rounds))
    return {
        "backend": trainer.backend,
        "code": "chapter (reference)" if reference else "resnet-fmnist",
        "framework": trainer.framework,
        "device": trainer.device_name,
        "processor": platform.processor() or platform.machine(),
        "batch_size": batch_size,
        "resize": size,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "train_examples_per_sec_rounds": [round(batch_size / t, 2) for t in train_rounds],
        "train_examples_per_sec": round(train_eps, 2),
        "inference_examples_per_sec": round(infer_eps, 2),
        "train_gflops": round(train_gflops, 2),
        "inference_gflops": round(infer_gflops, 2),
        "matmul_gflops": round(matmul_gflops, 2),
        "matmul_size": matmul_size,
        "matmul_gflops_rounds": [round(m, 2) for m in matmul_rounds],
        "fraction_of_matmul": round(fraction, 3),
        "inference_fraction_of_matmul": round(infer_gflops / matmul_gflops, 3),
        "peak_memory_mb": round(_peak_memory_mb(trainer), 1),
    }
