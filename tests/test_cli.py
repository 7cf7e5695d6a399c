"""The command line: one clear line for every mistake, files for every run, compare and bench."""
import importlib
import importlib.util
import json

import numpy as np
import pytest

from common.backend import BACKENDS
from common.cli import main
from common.flops import training_flops_per_example
from common.spec import get_spec
from common.weights import init_weights, read_architecture, save_weights

from helpers import SMALL_ARCH

#: In tf, these run on TensorFlow's graph executor (tests/conftest.py): they test the command line.
pytestmark = pytest.mark.graph_executor


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_exit(capsys, *argv):
    """For argparse's own errors, which exit through SystemExit."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def assert_one_line_error(err, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert any(all(w in line for w in words) for line in lines), err
    assert len(lines) <= 3, err  # argparse adds its usage line; nothing else


# --- argument errors (no framework needed) ---------------------------------------------

def test_unknown_backend(capsys):
    code, _, err = run_exit(capsys, "train", "--backend", "caffe")
    assert code == 2
    assert_one_line_error(err, "invalid choice", "caffe")


@pytest.mark.parametrize("command", ["train", "evaluate", "bench"])
def test_unknown_precision(capsys, command):
    code, _, err = run_exit(capsys, command, "--backend", "torch", "--precision", "fp16")
    assert code == 2
    assert_one_line_error(err, "--precision", "invalid choice: 'fp16'", "'fp32', 'tf32', 'bf16'")


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_non_positive_sizes(capsys, flag, value):
    code, _, err = run_exit(capsys, "train", "--backend", "torch", flag, value)
    assert code == 2
    assert_one_line_error(err, flag, "positive integer")


# find_spec, not an import: importing a framework before its backend package would skip the
# package's set-up (resnet_mx sets MXNet's threads before MXNet's first import).
MISSING_FRAMEWORKS = [name for name in BACKENDS if importlib.util.find_spec(BACKENDS[name].module) is None]


@pytest.mark.skipif(not MISSING_FRAMEWORKS, reason="every framework imports here")
def test_missing_framework_is_one_line(capsys):
    missing = MISSING_FRAMEWORKS
    code, _, err = run(capsys, "train", "--backend", missing[0], "--synthetic")
    assert code == 1
    assert_one_line_error(err, "needs", BACKENDS[missing[0]].framework, "pip install")


def test_compare_writes_table_and_plot(capsys, tmp_path):
    losses = list(np.linspace(3.0, 1.0, 8))
    # tf leaves mx's path by 2e-3 relative at step 5; torch and mx stay within 1e-3 throughout.
    step_losses = {"torch": [x * (1 + 9e-4) for x in losses], "tf": losses[:4] + [x * 1.002 for x in losses[4:]],
                   "mx": losses}
    runs = []
    for backend, speed in (("torch", 150.0), ("tf", 120.0), ("mx", 110.0)):
        directory = tmp_path / backend
        directory.mkdir()
        history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.1 * e, "test_acc": 0.45 + 0.1 * e,
                    "examples_per_sec": speed, "seconds": 10.0, "eval_seconds": 1.0} for e in (1, 2)]
        (directory / "metrics.json").write_text(json.dumps({
            "backend": backend, "framework": f"{backend} 1.0", "device": "cpu", "seed": 0, "history": history,
            "step_losses": step_losses[backend], "wall_seconds": 22.0}))
        runs.append(str(directory))
    code, out, err = run(capsys, "compare", *runs, "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| backend | framework | device |")
    assert "| torch | torch 1.0 | cpu | resnet18 (d2l) | 0 | 2 | 0.5000 | 0.7000 | 0.6500 | 150.0 | 22.0 |" in table
    assert "mean ± std" not in table  # one seed per backend: no summary over seeds
    assert "| mx |" in out
    assert "torch and tf: same steps until step 4 of 8" in table
    assert "torch and mx: same steps for all 8 steps" in table
    assert "tf and mx: same steps until step 4 of 8" in out
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_summarises_seeds_per_backend(capsys, tmp_path):
    runs = []
    for backend, accuracies in (("torch", (0.70, 0.74)), ("mx", (0.71, 0.77))):
        for seed, accuracy in enumerate(accuracies):
            directory = tmp_path / f"{backend}{seed}"
            directory.mkdir()
            history = [{"epoch": 1, "train_loss": 1.0 + seed, "train_acc": 0.6, "test_acc": accuracy,
                        "examples_per_sec": 9.0, "seconds": 1.0, "eval_seconds": 1.0}]
            hyperparameters = {"seed": seed, "lr": 0.05}
            (directory / "metrics.json").write_text(json.dumps({
                "backend": backend, "framework": backend, "device": "cpu", "seed": seed, "history": history,
                "hyperparameters": hyperparameters, "step_losses": [3.0, 2.0 + seed, 1.5 if backend == "mx" else 1.0]}))
            runs.append(str(directory))
    code, out, err = run(capsys, "compare", *runs, "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    # torch: 0.72 ± 0.0283 (sample std), mx: 0.74 ± 0.0424; the difference's standard error is 0.0361.
    assert "| torch | 2 (0, 1) | 1.5000 ± 0.7071 | 0.6000 ± 0.0000 | 0.7200 ± 0.0283 |" in out
    assert "| mx | 2 (0, 1) | 1.5000 ± 0.7071 | 0.6000 ± 0.0000 | 0.7400 ± 0.0424 |" in out
    assert "torch and mx: mean test acc 0.7200 and 0.7400, -0.0200 apart (0.6 standard errors)" in out
    # Step by step only between runs of the same seed and settings, never within a backend.
    assert "torch and mx (seed 0): same steps until step 2 of 3" in out
    assert "torch and mx (seed 1): same steps until step 2 of 3" in out
    assert out.count("same steps") == 2


def test_compare_reads_runs_without_step_losses(capsys, tmp_path):
    # metrics.json written before step_losses existed: the table, no agreement line.
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.4, "examples_per_sec": 9.0,
                "seconds": 1.0, "eval_seconds": 1.0}]
    (tmp_path / "metrics.json").write_text(json.dumps({"backend": "torch", "framework": "PyTorch", "device": "cpu",
                                                       "history": history}))
    code, out, err = run(capsys, "compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    assert "same steps" not in out and "| torch |" in out


def test_compare_bad_input(capsys, tmp_path):
    code, _, err = run(capsys, "compare", str(tmp_path / "nothing"))
    assert code == 1
    assert_one_line_error(err, "no such file")
    (tmp_path / "metrics.json").write_text("{not json")
    code, _, err = run(capsys, "compare", str(tmp_path))
    assert code == 1
    assert_one_line_error(err, "not a readable metrics.json")


# --- with this environment's backend ---------------------------------------------------

TINY = ["--synthetic", "--epochs", "1", "--batch-size", "16", "--resize", "none", "--subset", "32",
        "--test-subset", "16", "--quiet", "--arch", SMALL_ARCH]


def test_train_writes_checkpoint_and_metrics(capsys, tmp_path, backend_name):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), *TINY)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == backend_name and metrics["finished"] is True
    assert metrics["hyperparameters"]["batch_size"] == 16 and metrics["hyperparameters"]["resize"] is None
    assert len(metrics["history"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.safetensors", "metrics.json",
                                                     "model.safetensors"]
    # evaluate reads the resize from the checkpoint
    code, out_text, err = run(capsys, "evaluate", "--backend", backend_name, "--weights",
                              str(out / "checkpoint.safetensors"), "--synthetic", "--test-subset", "16")
    assert code == 0, err
    assert "test acc" in out_text and "on 16 images" in out_text


def test_diverged_run_exits_1_and_writes_no_checkpoint(capsys, tmp_path, backend_name):
    # lr 1e6 breaks the network within the epoch; whether the training loss, a weight or only
    # the eval-mode forward overflows first is up to rounding, and each must stop the run.
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), "--synthetic", "--epochs", "1",
                       "--batch-size", "32", "--resize", "none", "--subset", "256", "--test-subset", "64", "--lr",
                       "1e6", "--quiet")
    assert code == 1
    assert_one_line_error(err, "epoch 1", "--lr")
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.parametrize("name, hint", [
    ("checkpoint.safetensors", "--resume"),
    ("checkpoint.npz", "--resume"),  # an older run's
    ("model.safetensors", "choose another --out"),
])
def test_train_never_overwrites_a_checkpoint(capsys, tmp_path, backend_name, name, hint):
    out = tmp_path / "run"
    save_weights(out / name, init_weights(seed=9))
    before = (out / name).read_bytes()
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), *TINY)
    assert code == 1
    assert_one_line_error(err, str(out / name), "already exists", hint)
    assert sorted(p.name for p in out.iterdir()) == [".lock", name] and (out / name).read_bytes() == before


def test_missing_data_is_one_line(capsys, tmp_path, backend_name):
    code, _, err = run(capsys, "train", "--backend", backend_name, "--data-dir", str(tmp_path / "absent"),
                       "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 1
    assert_one_line_error(err, str(tmp_path / "absent"))


@pytest.mark.parametrize("name, content, words", [
    ("checkpoint.safetensors", b"garbage", "not a safetensors or .npz weights file"),
    ("checkpoint.npz", b"garbage", "not a safetensors or .npz weights file"),
    ("checkpoint.npz", None, "missing array 'layer1.2.conv1.weight' (and 95 more) for resnet34"),  # says resnet34
])
def test_evaluate_refuses_bad_checkpoints(capsys, tmp_path, backend_name, name, content, words):
    path = tmp_path / name
    if content is None:
        save_weights(path, init_weights(seed=0))
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["__arch__"] = np.array("resnet34")
        np.savez(path, **arrays)
    else:
        path.write_bytes(content)
    code, _, err = run(capsys, "evaluate", "--backend", backend_name, "--weights", str(path), "--synthetic")
    assert code == 1
    assert_one_line_error(err, str(path), words)


#: A small custom network (the book's arch tuple) for the command-line tests of --arch and --style.
def test_train_evaluate_and_resume_name_the_network(capsys, tmp_path, backend_name):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), "--arch", SMALL_ARCH,
                       "--style", "preact", *TINY)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["hyperparameters"]["arch"], metrics["hyperparameters"]["style"]) == ("((1, 16), (1, 32))", "preact")
    assert read_architecture(out / "checkpoint.safetensors") == ("((1, 16), (1, 32))", "preact")
    # evaluate takes the network from the file ...
    code, text, err = run(capsys, "evaluate", "--backend", backend_name, "--weights",
                          str(out / "checkpoint.safetensors"), "--synthetic", "--test-subset", "16")
    assert code == 0 and "test acc" in text, err
    # ... and refuses another one, naming both
    code, _, err = run(capsys, "evaluate", "--backend", backend_name, "--weights", str(out / "checkpoint.safetensors"),
                       "--synthetic", "--style", "d2l")
    assert code == 1
    assert_one_line_error(err, "holds weights for ((1, 16), (1, 32)) (style preact), "
                               "not ((1, 16), (1, 32)) (style d2l)")
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), "--resume", "--arch", SMALL_ARCH,
                       *[a for a in TINY if a != "--quiet"], "--epochs", "2", "--quiet")
    assert code == 1
    assert_one_line_error(err, "(style preact), not ((1, 16), (1, 32)) (style d2l)")


@pytest.mark.parametrize("argv, words", [
    (("--arch", "resnet19"), "unknown architecture 'resnet19'"),
    (("--arch", "((2, 64), (0, 128))"), "positive integers"),
    (("--style", "v2"), "invalid choice: 'v2'"),
])
def test_bad_network_is_one_line(capsys, argv, words):
    code, _, err = run_exit(capsys, "train", "--backend", "torch", *argv)
    assert code == 2
    assert_one_line_error(err, words)


def test_bench_reports_json(capsys, backend_name):
    code, out, err = run(capsys, "bench", "--backend", backend_name, "--batch-size", "4", "--resize", "32",
                         "--steps", "1", "--warmup", "1", "--rounds", "3", "--peak-gflops", "100")
    assert code == 0, err
    result = json.loads(out)
    for key in ("backend", "framework", "device", "cpu", "batch_size", "resize", "train_examples_per_sec",
                "inference_examples_per_sec", "train_gflops", "peak", "train_share_of_peak", "peak_memory_mb"):
        assert key in result, key
    assert result["train_examples_per_sec"] > 0 and result["peak"] == {"gflops": 100.0, "by": "given"}
    assert result["train_share_of_peak"] == pytest.approx(result["train_gflops"] / 100, abs=1e-3)
    rounds = result["train_examples_per_sec_rounds"]
    assert len(rounds) == 3 and sorted(rounds)[1] == pytest.approx(result["train_examples_per_sec"], rel=1e-3)


def test_bench_reference_times_the_chapters_code_twice(capsys, backend_name):
    code, out, err = run(capsys, "bench", "--backend", backend_name, "--batch-size", "4", "--resize", "32",
                         "--steps", "1", "--warmup", "1", "--rounds", "1", "--peak-gflops", "100", "--reference")
    assert code == 0, err
    result = json.loads(out)
    assert (result["code"], result["precision"], result["deterministic"]) == ("resnet-fmnist", "fp32", True)
    chapter = result["chapter"]
    assert chapter["framework_defaults"]["precision"] == "the framework's defaults"
    assert chapter["same_precision"]["precision"] == "fp32"
    # The chapter runs first; this project's peak memory is counted from after it.
    assert result["peak_memory_mb"] > 0
    for settings, speedup in result["train_speedup_vs_chapter"].items():
        seconds_chapter = 4 / chapter[settings]["train_examples_per_sec"]
        assert speedup == pytest.approx(seconds_chapter / (4 / result["train_examples_per_sec"]), rel=2e-2)


def test_train_in_bf16_records_it_and_resumes_only_in_bf16(capsys, tmp_path, backend_name):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), "--precision", "bf16", *TINY)
    assert code == 0, err
    hyperparameters = json.loads((out / "metrics.json").read_text())["hyperparameters"]
    assert (hyperparameters["precision"], hyperparameters["deterministic"]) == ("bf16", True)
    two_epochs = [("2" if previous == "--epochs" else arg) for previous, arg in zip([None] + TINY, TINY)]
    code, _, err = run(capsys, "train", "--backend", backend_name, "--out", str(out), "--resume", *two_epochs)
    assert code == 1
    assert_one_line_error(err, "precision='bf16' (now 'fp32')")


def test_bench_takes_the_network(capsys, backend_name):
    # Another network and style than the default: two stages of the book's tuple, pre-activation.
    arch = "((1, 64), (1, 128))"
    code, out, err = run(capsys, "bench", "--backend", backend_name, "--arch", arch, "--style", "preact",
                         "--batch-size", "2", "--resize", "32", "--steps", "1", "--warmup", "1", "--rounds", "1",
                         "--peak-gflops", "100")
    assert code == 0, err
    result = json.loads(out)
    assert (result["arch"], result["style"]) == (get_spec(arch).name, "preact")
    seconds = 2 / result["train_examples_per_sec"]  # the FLOP count is this network's, not ResNet-18's
    flops = training_flops_per_example(get_spec(arch, "preact"), 1, 32, 32)
    assert result["train_gflops"] == pytest.approx(2 * flops / seconds / 1e9, rel=1e-2, abs=0.011)  # both rounded
    code, _, err = run(capsys, "bench", "--backend", backend_name, "--arch", "resnet50", "--reference")
    assert code == 1
    assert_one_line_error(err, "--reference times the chapter's own ResNet-18")


def test_peak_reports_the_best_matmul_of_numpy_and_the_framework(capsys, backend_name):
    code, out, err = run(capsys, "peak", "--backend", backend_name)
    assert code == 0, err
    peak = json.loads(out)
    assert len(peak["table"]) == 2 and any(name.startswith("NumPy") for name in peak["table"])
    best = max(g for row in peak["table"].values() for g in row.values())
    assert peak["gflops"] == best > 0 and str(peak["size"]) in peak["table"][peak["by"]]
