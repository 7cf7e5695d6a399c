"""``resnet-fmnist bench``: how fast one backend trains and infers, against the machine's peak.

Training and inference examples/sec on one fixed batch (each timed step includes moving the
batch from host memory to the device, as in training), the achieved GFLOP/s (FLOPs counted
once, from the spec in :mod:`common.spec`, the same for every backend), their share of the
machine's fp32 peak (one yardstick for every backend, :mod:`common.machine`), and peak memory.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from . import distributed
from .autotune import fast_paths_mode
from .backend import backend_part
from .flops import forward_flops_per_example, training_flops_per_example
from .heap import peak_resident_mb
from .hparams import check_precision
from .machine import MATMUL_SIZES, best_matmul_gflops, describe, numpy_matmul_gflops, theoretical_peak_gflops
from .sharding import check_shardable, shard_slices
from .spec import get_spec
from .weights import init_weights

__all__ = ["run_bench", "measure_peak", "time_steps"]


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
    return round((value / 2**20) if value else peak_resident_mb(), 1)


def measure_peak(trainer=None, sizes=MATMUL_SIZES) -> dict:
    """The machine's measured fp32 peak (best matrix product over ``sizes``: NumPy's BLAS and, with
    a trainer, its framework's own) and the theoretical one (:mod:`common.machine`)."""
    on_cpu = trainer is None or trainer.device_name.startswith("cpu")
    matmuls = {f"NumPy {np.__version__}": numpy_matmul_gflops} if on_cpu else {}
    if trainer is not None:
        matmuls[trainer.framework] = trainer.matmul_gflops
    peak = best_matmul_gflops(matmuls, sizes)
    peak["theoretical_gflops"] = theoretical_peak_gflops() if on_cpu else None
    return peak


def _time_trainer(trainer, images, labels, *, steps, warmup, rounds) -> dict:
    """Training and inference seconds per step: ``rounds`` rounds of ``steps`` steps, the median counts."""
    train_rounds = [time_steps(trainer, trainer.train_step, images, labels, steps, warmup if i == 0 else 0)
                    for i in range(rounds)]
    infer_rounds = [time_steps(trainer, trainer.eval_step, images, labels, steps, warmup if i == 0 else 0)
                    for i in range(rounds)]
    return {"train": train_rounds, "train_seconds": statistics.median(train_rounds),
            "inference_seconds": statistics.median(infer_rounds)}


def _time_chapter(backend_name, images, labels, device, precision, steps, warmup, rounds) -> dict:
    """The chapter's own code (the backend's ``reference`` module) timed as :func:`_time_trainer`
    times this project's, twice: with the framework's default settings and with ``precision``'s.
    A precision the chapter's code cannot run in gets its reason instead."""
    reference_trainer = backend_part(backend_name, "reference").ReferenceTrainer
    timings = {}
    for settings, chapter_precision in (("framework_defaults", None), ("same_precision", precision)):
        try:
            chapter = reference_trainer(device=device, precision=chapter_precision)
        except ValueError as error:  # the chapter's code cannot run in this precision: say why
            timings[settings] = {"precision": chapter_precision, "error": str(error)}
            continue
        timings[settings] = _time_trainer(chapter, images, labels, steps=steps, warmup=warmup, rounds=rounds)
        timings[settings]["precision"] = chapter_precision or "the framework's defaults"
        del chapter
    return timings


def run_bench(backend_name: str, *, batch_size: int = 64, resize=96, steps: int = 5, warmup: int = 2,
              rounds: int = 3, device=None, reference: bool = False, peak_gflops=None, arch="resnet18",
              style="d2l", precision: str = "fp32", deterministic: bool = True) -> dict:
    """Benchmark one backend and return the figures as a JSON-ready dict.

    Training and inference are timed in ``rounds`` rounds of ``steps`` steps; the median round
    counts. The yardstick is the machine's fp32 peak, the same number for every backend:
    ``peak_gflops`` where given (``tools/bench_all.py`` measures it once, across every
    framework), else measured here (:func:`measure_peak`).

    ``reference=True`` also times the chapter's own, unmodified code for the framework (the
    backend's ``reference`` module) in the same way, twice: with the framework's default
    settings (PyTorch and TensorFlow allow TF32 on a GPU by default) and with this run's
    ``precision`` settings, and reports this project's speed over each
    (``train_speedup_vs_chapter``).

    In a worker of a data-parallel job (:mod:`common.distributed`), each worker steps on its
    shard of the batch with the backend's ``DistributedTrainer``; worker 0 returns the figures
    for the whole batch (every step waits for all workers' gradients), the others ``None``.
    """
    precision = check_precision(precision)
    size = resize or 28
    spec = get_spec(arch, style)
    if reference and (spec.name, spec.style) != ("resnet18", "d2l"):
        raise ValueError(f"--reference times the chapter's own ResNet-18; it has no {spec.label}")
    workers = distributed.job_size(backend_name)
    if workers > 1 and reference:
        raise ValueError("--reference times the chapter's code in one process; leave out --workers")
    check_shardable(batch_size, workers)
    job = backend_part(backend_name, "distributed") if workers > 1 else None
    trainer_class = job.DistributedTrainer if job else backend_part(backend_name, "train").Trainer
    try:
        return _run_bench(trainer_class, backend_name, spec, precision, size, batch_size, steps, warmup, rounds,
                          device, reference, peak_gflops, deterministic)
    finally:
        if job:  # leave the job before the interpreter exits, as training does
            job.shutdown()


def _run_bench(trainer_class, backend_name, spec, precision, size, batch_size, steps, warmup, rounds, device,
               reference, peak_gflops, deterministic) -> dict:
    """:func:`run_bench` with the trainer class chosen (one process's, or a data-parallel worker's)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch_size, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size).astype(np.int64)
    # The chapter's code first, before this project's Trainer sets anything process-wide (PyTorch's
    # keeps freed memory on the C heap, common.heap): it runs as the book's would.
    chapter = None
    if reference:
        chapter = _time_chapter(backend_name, images, labels, device, precision, steps, warmup, rounds)
    trainer = trainer_class(arch=spec, style=spec.style, device=device, precision=precision,
                            deterministic=deterministic)
    # This project's peak memory, not the chapter's (unknown where the count cannot restart).
    peak_memory_known = chapter is None or trainer.reset_peak_memory()
    trainer.import_weights(init_weights(spec, 0))
    shard = shard_slices(batch_size, trainer.world_size)[trainer.rank]
    images, labels = images[shard], labels[shard]

    peak = measure_peak(trainer) if peak_gflops is None else {"gflops": float(peak_gflops), "by": "given"}
    train_flops = batch_size * training_flops_per_example(spec, 1, size, size)
    infer_flops = batch_size * forward_flops_per_example(spec, 1, size, size)
    timed = _time_trainer(trainer, images, labels, steps=steps, warmup=warmup, rounds=rounds)
    train_seconds, infer_seconds = timed["train_seconds"], timed["inference_seconds"]
    train_gflops, infer_gflops = train_flops / train_seconds / 1e9, infer_flops / infer_seconds / 1e9
    if trainer.rank != 0:
        return None
    result = {
        "backend": trainer.backend,
        "code": "resnet-fmnist",
        "arch": spec.name,
        "style": spec.style,
        "stem": spec.stem,
        "precision": precision,
        "deterministic": deterministic,
        "framework": trainer.framework,
        "device": trainer.device_name,
        "cpu": describe(),
        "batch_size": batch_size,
        "workers": trainer.world_size,
        "engine": trainer.engine,
        "resize": size,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "fast_paths": fast_paths_mode(),
        "train_examples_per_sec_rounds": [round(batch_size / t, 2) for t in timed["train"]],
        "train_examples_per_sec": round(batch_size / train_seconds, 2),
        "inference_examples_per_sec": round(batch_size / infer_seconds, 2),
        "train_gflops": round(train_gflops, 2),
        "inference_gflops": round(infer_gflops, 2),
        "peak": peak,
        "train_share_of_peak": round(train_gflops / peak["gflops"], 3),
        "inference_share_of_peak": round(infer_gflops / peak["gflops"], 3),
        "peak_memory_mb": _peak_memory_mb(trainer) if peak_memory_known else None,
    }
    if chapter is not None:
        result["chapter"], result["train_speedup_vs_chapter"] = {}, {}
        for settings, timed in chapter.items():
            if "error" in timed:
                result["chapter"][settings] = timed
                continue
            result["chapter"][settings] = {
                "precision": timed["precision"],
                "train_examples_per_sec_rounds": [round(batch_size / t, 2) for t in timed["train"]],
                "train_examples_per_sec": round(batch_size / timed["train_seconds"], 2),
                "inference_examples_per_sec": round(batch_size / timed["inference_seconds"], 2),
            }
            result["train_speedup_vs_chapter"][settings] = round(timed["train_seconds"] / train_seconds, 3)
    return result
