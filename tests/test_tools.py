"""The report-making parts of tools/ (framework-free): bench_all's rows and the GPU check's summary."""
import importlib.util
import os

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_result(ours=100.0, chapter=80.0, same=90.0, resize=96, precision="fp32", backend="torch"):
    def timed(eps, label):
        return {"precision": label, "train_examples_per_sec": eps, "inference_examples_per_sec": 4 * eps,
                "train_examples_per_sec_rounds": [eps] * 3}

    return {"backend": backend, "code": "resnet-fmnist", "resize": resize, "batch_size": 256, "precision": precision,
            "device": "cuda:0", "train_examples_per_sec": ours, "inference_examples_per_sec": 400.0,
            "train_gflops": 50.0, "inference_gflops": 60.0, "train_share_of_peak": 0.5, "inference_share_of_peak": 0.6,
            "peak_memory_mb": 1000.0,
            "chapter": {"framework_defaults": timed(chapter, "the framework's defaults"),
                        "same_precision": timed(same, precision)},
            "train_speedup_vs_chapter": {"framework_defaults": ours / chapter, "same_precision": ours / same}}


def test_bench_all_makes_the_chapters_row_from_the_same_process():
    row = _tool("bench_all").chapter_row(_bench_result(ours=100.0, chapter=80.0))
    assert row["code"] == "chapter (reference)" and row["precision"] == "the framework's defaults"
    assert row["train_examples_per_sec"] == 80.0 and row["train_gflops"] == pytest.approx(40.0)
    assert row["train_share_of_peak"] == pytest.approx(0.4) and row["inference_gflops"] == pytest.approx(48.0)
    assert "chapter" not in row and "train_speedup_vs_chapter" not in row


def test_the_gpu_checks_summary_names_every_miss():
    gpu_check = _tool("gpu_check")
    suites = [{"backend": "torch", "exit": 1, "summary": "1 failed, 170 passed", "failed": ["FAILED tests/x.py::t"],
               "seconds": 90.0}]
    benches = [[_bench_result(ours=100.0, same=120.0), _bench_result(ours=200.0, same=150.0, resize=28),
                {"backend": "torch", "resize": 28, "precision": "bf16", "error": "ValueError: no"}]]
    recipes = [{"precision": "fp32", "test_acc": 0.915, "examples_per_sec": 15_000.0, "peak_device_memory_mb": 1300.0,
                "wall_seconds": 60.0, "device": "cuda:0"},
               {"precision": "bf16", "test_acc": 0.90, "examples_per_sec": 30_000.0, "peak_device_memory_mb": 900.0,
                "wall_seconds": 40.0, "device": "cuda:0"}]
    text, ok = gpu_check.summary(suites, benches, recipes)
    assert not ok
    missed = text.splitlines()[-1]
    for words in ("torch suite", "bench torch 96 px fp32 slower than the chapter", "bench torch 28 bf16",
                  "bf16 accuracy within 0.01 of fp32"):
        assert words in missed, words
    assert "fp32 recipe" not in missed and "bf16 recipe >= 25,000" not in missed
    assert "FAILED tests/x.py::t" in text
    text, ok = gpu_check.summary([dict(suites[0], exit=0, failed=[])], [benches[0][1:2]],
                                 [recipes[0], dict(recipes[1], test_acc=0.91)])
    assert ok and text.splitlines()[-1] == "all targets met", text


def test_the_gpu_checks_summary_holds_the_modern_preset_to_its_target():
    gpu_check = _tool("gpu_check")
    recipes = [{"precision": "fp32", "test_acc": 0.915, "examples_per_sec": 15_000.0, "peak_device_memory_mb": 1.0,
                "wall_seconds": 60.0, "device": "cuda:0"},
               {"precision": "bf16", "test_acc": 0.91, "examples_per_sec": 30_000.0, "peak_device_memory_mb": 1.0,
                "wall_seconds": 40.0, "device": "cuda:0"}]

    def seed(backend, number, accuracy):
        return {"backend": backend, "seed": number, "test_acc": accuracy, "seconds_to": {"0.93": 30.0, "0.95": None},
                "wall_seconds": 90.0, "device": "cuda:0"}

    presets = [seed("torch", 0, 0.952), seed("torch", 1, 0.953), seed("torch", 2, 0.951),
               seed("jax", 0, 0.952), seed("jax", 1, 0.94), {"backend": "jax", "seed": 2, "error": "boom"}]
    text, ok = gpu_check.summary([], [], recipes, presets)
    missed = text.splitlines()[-1]
    assert not ok and "jax: modern + small stem" in missed and "torch: modern" not in missed, text
    assert "jax seed 2: failed: boom" in text
    text, ok = gpu_check.summary([], [], recipes, presets[:3])
    assert ok, text


def test_the_gpu_check_holds_only_the_steps_it_ran_to_their_targets():
    gpu_check = _tool("gpu_check")
    text, ok = gpu_check.summary([], [], [], [{"backend": "torch", "seed": 0, "test_acc": 0.96, "wall_seconds": 9.0,
                                               "seconds_to": {"0.93": 3.0, "0.95": 6.0}, "device": "cuda:0"}])
    assert ok and "fp32 recipe" not in text, text
