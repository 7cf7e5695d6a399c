"""Checkpoints in safetensors (issue 24): what the file holds, that it opens with the safetensors
library and nothing of this project's, that older runs' ``.npz`` files still load and resume, the
``export`` command, and one line (with nothing half written) for every bad input."""
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from common import export as export_module
from common.cli import main
from common.export import ExportError, export
from common.naming import parameter_shapes, trainable_parameter_names
from common.optim import MOMENTUM_PREFIX, STEP_STATE
from common.spec import get_spec
from common.training import CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, METRICS_NAME, MODEL_NAME
from common.weights import (
    SAFETENSORS_FORMAT,
    WeightsError,
    load_weights,
    read_architecture,
    read_metadata,
    read_optimizer_state,
    read_spec,
    save_weights,
)

from helpers import EXPECTED_DIR, SMALL_ARCH, disturbed_weights

#: An older run's directory (issue 23's format): tests/expected/torch_epoch1 (tools/make_torch_checkpoint.py).
OLD_RUN = os.path.join(EXPECTED_DIR, "torch_epoch1")
OLD_CHECKPOINT = os.path.join(OLD_RUN, LEGACY_CHECKPOINT_NAME)


def _optimizer_state(spec, in_channels=1, num_classes=10, step=12, seed=0):
    rng = np.random.default_rng(seed)
    state = {STEP_STATE: np.array(step, np.int64)}
    for name in trainable_parameter_names(spec, in_channels, num_classes):
        shape = parameter_shapes(spec, in_channels, num_classes)[name]
        state[MOMENTUM_PREFIX + name] = rng.standard_normal(shape)  # float64, as every backend exports it
    return state


def _assert_same_arrays(got, want):
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name  # bit for bit


def _listing(directory):
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------- what the file holds

@pytest.mark.parametrize("arch, style, stem, in_channels, num_classes, with_optimizer", [
    (SMALL_ARCH, "preact", "small", 3, 7, True),
    ("resnet18", "torchvision", "imagenet", 1, 10, False),
])
def test_a_round_trip_is_bit_identical(tmp_path, arch, style, stem, in_channels, num_classes, with_optimizer):
    spec = get_spec(arch, style, stem)
    weights = disturbed_weights(spec, seed=4, in_channels=in_channels, num_classes=num_classes)
    state = _optimizer_state(spec, in_channels, num_classes) if with_optimizer else None
    metadata = {"train_state": {"epoch": 3, "step_losses": [2.302585092994046, 0.1 + 0.2], "config": {"lr": 0.05}}}
    path = tmp_path / "checkpoint.safetensors"
    save_weights(path, weights, spec, metadata=metadata, optimizer_state=state)
    assert _listing(tmp_path) == ["checkpoint.safetensors"]  # no temporary left behind
    loaded = load_weights(path, spec)
    assert list(loaded) == list(parameter_shapes(spec, in_channels, num_classes))
    _assert_same_arrays(loaded, weights)
    assert read_spec(path) == spec and read_architecture(path) == (spec.name, style)
    assert read_metadata(path) == metadata
    got_state = read_optimizer_state(path)
    if state is None:
        assert got_state == {}
    else:
        _assert_same_arrays(got_state, state)
        assert got_state[STEP_STATE].shape == () and got_state[STEP_STATE].dtype == np.int64


#: Reads a file with the safetensors library alone, in a fresh interpreter, and proves that nothing
#: of this project was imported.
READER = """
import json, sys
from safetensors import safe_open
from safetensors.numpy import load_file
tensors = load_file(sys.argv[1])
with safe_open(sys.argv[1], framework="numpy") as handle:
    header = handle.metadata()
assert not any(name == "common" or name.startswith("common.") for name in sys.modules)
print(json.dumps({"header": header, "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in tensors.items()},
                  "sums": {k: float(v.sum()) for k, v in tensors.items()}}))
"""


def test_the_file_opens_with_safetensors_and_nothing_of_ours(tmp_path):
    spec = get_spec(SMALL_ARCH, "torchvision")
    weights = disturbed_weights(spec, seed=1)
    state = _optimizer_state(spec, step=7)
    path = tmp_path / "checkpoint.safetensors"
    save_weights(path, weights, spec, metadata={"train_state": {"epoch": 1}}, optimizer_state=state)
    done = subprocess.run([sys.executable, "-I", "-c", READER, str(path)], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["header"] == {"format": SAFETENSORS_FORMAT, "arch": spec.name, "style": "torchvision",
                              "stem": "imagenet", "in_channels": "1", "num_classes": "10",
                              "metadata": json.dumps({"train_state": {"epoch": 1}})}
    arrays = dict(weights, **{f"__optimizer__.{name}": value for name, value in state.items()})
    assert seen["tensors"] == {name: [str(value.dtype), list(value.shape)] for name, value in arrays.items()}
    assert seen["sums"] == {name: float(value.sum()) for name, value in arrays.items()}
    assert seen["tensors"]["__optimizer__.step"] == ["int64", []]


def test_an_npz_path_still_writes_the_older_format_and_every_reader_reads_both(tmp_path):
    spec = get_spec(SMALL_ARCH, "d2l", "small")
    weights = disturbed_weights(spec, seed=2)
    state = _optimizer_state(spec, step=3)
    for name in ("w.npz", "w.safetensors"):
        save_weights(tmp_path / name, weights, spec, metadata={"a": [1, 2]}, optimizer_state=state)
        _assert_same_arrays(load_weights(tmp_path / name, spec), weights)
        _assert_same_arrays(read_optimizer_state(tmp_path / name), state)
        assert read_metadata(tmp_path / name) == {"a": [1, 2]} and read_spec(tmp_path / name) == spec
    assert (tmp_path / "w.npz").read_bytes()[:4] == b"PK\x03\x04"
    # The format is told by the content, not the name.
    shutil.copy(tmp_path / "w.npz", tmp_path / "npz-named.safetensors")
    _assert_same_arrays(load_weights(tmp_path / "npz-named.safetensors", spec), weights)


def test_an_older_runs_checkpoint_loads():
    spec = read_spec(OLD_CHECKPOINT)
    assert spec == get_spec(SMALL_ARCH)
    weights = load_weights(OLD_CHECKPOINT, spec)
    assert set(weights) == set(parameter_shapes(spec))
    assert int(read_optimizer_state(OLD_CHECKPOINT)[STEP_STATE]) == 4
    assert read_metadata(OLD_CHECKPOINT)["train_state"]["epoch"] == 1


# --------------------------------------------------------------------------- bad files: one line each

def _saved(tmp_path, name="checkpoint.safetensors", arch=SMALL_ARCH, style="torchvision"):
    path = tmp_path / name
    spec = get_spec(arch, style)
    save_weights(path, disturbed_weights(spec, seed=0), spec, metadata={"train_state": {"epoch": 1}},
                 optimizer_state=_optimizer_state(spec))
    return path, spec


def _refused(call, path, *words):
    with pytest.raises(WeightsError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message
    return message


def _header_length(path):
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("cut, words", [
    (lambda data, header: len(data) - 1, ["truncated: its tensors need"]),
    (lambda data, header: 8 + header + 100, ["truncated: its tensors need"]),
    (lambda data, header: 8 + header // 2, ["truncated: its safetensors header needs"]),
    (lambda data, header: 5, ["not a safetensors or .npz weights file"]),
    (lambda data, header: 0, ["not a safetensors or .npz weights file"]),
])
def test_a_truncated_file_is_one_line_in_every_reader(tmp_path, cut, words):
    path, spec = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:cut(data, _header_length(path))])
    for reader in (lambda: load_weights(path, spec), lambda: read_spec(path), lambda: read_metadata(path),
                   lambda: read_optimizer_state(path), lambda: read_architecture(path)):
        _refused(reader, path, *words)


def test_a_missing_or_foreign_file_is_one_line(tmp_path):
    _refused(lambda: load_weights(tmp_path / "absent.safetensors"), tmp_path / "absent.safetensors", "no such file")
    other = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"embedding": np.zeros((4, 2), np.float32)}, str(other), metadata={"by": "someone"})
    for reader in (lambda: load_weights(other), lambda: read_spec(other), lambda: read_metadata(other)):
        message = _refused(reader, other, "a safetensors file, but not one of resnet-fmnist's")
        assert "torchvision" not in message
    # A torchvision ResNet's state_dict (num_batches_tracked and all): what to do with it.
    spec = get_spec("resnet18", "torchvision")
    state_dict = {name: np.zeros(shape, np.float32) for name, shape in parameter_shapes(spec).items()}
    state_dict.update({name.replace("running_mean", "num_batches_tracked"): np.array(0, np.int64)
                       for name in state_dict if name.endswith("running_mean")})
    torchvision_file = tmp_path / "resnet18.safetensors"
    safetensors.numpy.save_file(state_dict, str(torchvision_file))
    _refused(lambda: load_weights(torchvision_file, spec), torchvision_file, "not one of resnet-fmnist's",
             "its tensors are torchvision's resnet18",
             "save_weights(path, weights, get_spec('resnet18', 'torchvision'))")


def _rewrite(path, change):
    """Rewrite a safetensors file through the safetensors library: ``change(tensors, header)``."""
    with safe_open(str(path), framework="numpy") as handle:
        header = dict(handle.metadata())
    tensors = safetensors.numpy.load_file(str(path))
    change(tensors, header)
    safetensors.numpy.save_file(tensors, str(path), metadata=header)


@pytest.mark.parametrize("change, words", [
    (lambda t, h: t.pop("layer2.0.bn2.running_var"), ["missing array 'layer2.0.bn2.running_var'"]),
    (lambda t, h: t.update(extra=np.zeros(3, np.float32)), ["unexpected array 'extra'"]),
    (lambda t, h: t.update({"fc.weight": np.zeros((10, 64), np.float32)}), ["'fc.weight' has shape (10, 64)"]),
    (lambda t, h: t.update({"fc.bias": np.zeros(10, np.int32)}), ["'fc.bias' has dtype int32, expected float32"]),
    (lambda t, h: t["layer1.0.conv1.weight"].__setitem__((0, 0, 0, 0), np.inf), ["'layer1.0.conv1.weight'", "NaN"]),
    (lambda t, h: h.update(in_channels="3"), ["'conv1.weight' has shape (64, 1, 7, 7)", "needs (64, 3, 7, 7)"]),
    (lambda t, h: h.update(num_classes="ten"), ["'num_classes' is 'ten', not a number"]),
    (lambda t, h: h.update(format="resnet-fmnist-safetensors/9"), ["format 'resnet-fmnist-safetensors/9' is not"]),
    (lambda t, h: h.pop("style"), ["header has no 'style'"]),
    (lambda t, h: h.update(arch="resnet34"),
     ["holds weights for resnet34 (style torchvision), not ((1, 16), (1, 32)) (style torchvision); "
      "pass --arch resnet34 --style torchvision"]),
    (lambda t, h: h.update(metadata="{not json"), []),  # load_weights does not read it; read_metadata refuses
])
def test_a_damaged_file_is_one_line_naming_file_and_key(tmp_path, change, words):
    path, spec = _saved(tmp_path)
    _rewrite(path, change)
    if words:
        _refused(lambda: load_weights(path, spec), path, *words)
    else:
        load_weights(path, spec)
        _refused(lambda: read_metadata(path), path, "metadata is not valid JSON")


def test_another_architecture_or_stem_names_the_flags(tmp_path):
    path, _ = _saved(tmp_path, arch="resnet18")
    _refused(lambda: load_weights(path, get_spec("resnet34", "torchvision")), path,
             "holds weights for resnet18 (style torchvision), not resnet34 (style torchvision); "
             "pass --arch resnet18 --style torchvision")
    _refused(lambda: load_weights(path, get_spec("resnet18", "torchvision", "small")), path,
             "pass --arch resnet18 --style torchvision --stem imagenet")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path, spec = _saved(tmp_path)
    before = path.read_bytes()
    good = load_weights(path, spec)
    bad = dict(good, **{"fc.bias": np.full(10, np.nan, np.float32)})
    with pytest.raises(WeightsError, match="'fc.bias' contains NaN"):
        save_weights(path, bad, spec)
    with pytest.raises(WeightsError, match="optimizer state 'step' is not a finite number array"):
        save_weights(path, good, spec, optimizer_state={"step": np.array(["x"])})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("common.files.os.fsync", disk_full)  # fails after the bytes went to the temporary file
    with pytest.raises(OSError, match="No space left"):
        save_weights(path, good, spec, metadata={"new": True})
    with pytest.raises(OSError, match="No space left"):
        save_weights(tmp_path / "new.safetensors", good, spec)
    assert path.read_bytes() == before and _listing(tmp_path) == ["checkpoint.safetensors"]


# --------------------------------------------------------------------------- export

def test_export_safetensors_is_the_checkpoint_without_the_optimizer(tmp_path):
    checkpoint, spec = _saved(tmp_path)
    out = export(checkpoint, "safetensors")
    assert out == str(tmp_path / MODEL_NAME)
    _assert_same_arrays(load_weights(out, spec), load_weights(checkpoint, spec))
    assert read_optimizer_state(out) == {} and read_metadata(out) == read_metadata(checkpoint)
    assert set(safetensors.numpy.load_file(out)) == set(parameter_shapes(spec))  # torchvision's keys, no more


def test_export_of_an_older_runs_npz_from_the_command_line(tmp_path, capsys):
    checkpoint = tmp_path / LEGACY_CHECKPOINT_NAME
    shutil.copy(OLD_CHECKPOINT, checkpoint)
    assert main(["export", str(checkpoint), "--format", "safetensors"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / MODEL_NAME}"
    spec = read_spec(OLD_CHECKPOINT)
    _assert_same_arrays(load_weights(tmp_path / MODEL_NAME, spec), load_weights(OLD_CHECKPOINT, spec))
    assert read_metadata(tmp_path / MODEL_NAME) == read_metadata(OLD_CHECKPOINT)
    assert read_optimizer_state(tmp_path / MODEL_NAME) == {}
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(tmp_path / "b.safetensors")]) == 0


@pytest.mark.parametrize("format", ["safetensors", "onnx", "gluon"])
def test_export_never_overwrites(tmp_path, capsys, format):
    checkpoint, _ = _saved(tmp_path)
    target = tmp_path / export_module.DEFAULT_NAMES[format]
    target.write_bytes(b"someone's file")
    before = {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)}
    assert main(["export", str(checkpoint), "--format", format]) == 1
    err = capsys.readouterr().err
    assert err == f"resnet-fmnist export: error: {target} exists; remove it or pass another --out\n"
    assert {name: (tmp_path / name).read_bytes() for name in _listing(tmp_path)} == before


def test_export_refuses_an_unknown_format_and_a_bad_checkpoint(tmp_path, capsys):
    checkpoint, _ = _saved(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["export", str(checkpoint), "--format", "pth"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'pth'" in err and len(err.strip().splitlines()) <= 2
    with pytest.raises(ExportError, match="unknown format 'pth'; choose one of: safetensors, onnx, gluon"):
        export(checkpoint, "pth")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(checkpoint.read_bytes()[:-10])
    assert main(["export", str(broken), "--format", "safetensors"]) == 1
    assert capsys.readouterr().err == f"resnet-fmnist export: error: {broken}: truncated: its tensors need " \
                                      f"{checkpoint.stat().st_size} bytes, the file has {broken.stat().st_size}\n"
    assert _listing(tmp_path) == ["broken.safetensors", "checkpoint.safetensors"]


def _fake_module(monkeypatch, name, **functions):
    module = types.ModuleType(f"common.{name}")
    module.__dict__.update(functions)
    monkeypatch.setitem(sys.modules, f"common.{name}", module)


@pytest.mark.parametrize("format, module, function, default", [
    ("onnx", "onnx_model", "export_onnx", "model.onnx"),
    ("gluon", "gluon_zoo", "export_gluon", "model.params"),
])
def test_export_hands_onnx_and_gluon_to_their_exporters(tmp_path, capsys, monkeypatch, format, module, function,
                                                        default):
    """The dispatch alone (the exporters have their own tests): what each is given, and a missing
    optional package as one line saying what to install."""
    checkpoint, spec = _saved(tmp_path)
    calls = []
    _fake_module(monkeypatch, module, **{function: lambda *args, **kwargs: calls.append((args, kwargs))})
    assert main(["export", str(checkpoint), "--format", format]) == 0
    (weights, got_spec, path), kwargs = calls[0]
    assert got_spec == spec and path == str(tmp_path / default)
    assert kwargs == {"metadata": read_metadata(checkpoint)}
    _assert_same_arrays(weights, load_weights(checkpoint, spec))
    assert capsys.readouterr().out == f"wrote {tmp_path / default}\n"

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx" if format == "onnx" else "mxnet")

    _fake_module(monkeypatch, module, **{function: missing})
    assert main(["export", str(checkpoint), "--format", format, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"resnet-fmnist export: error: export --format {format} needs the Python package ")
    assert export_module.INSTALL[format] in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_evaluate_with_onnx_runtime_is_routed_and_refuses_other_precisions(tmp_path, capsys, monkeypatch):
    checkpoint, _ = _saved(tmp_path)
    calls = []

    def evaluate(**kwargs):
        calls.append(kwargs)
        return {"loss": 0.5, "accuracy": 0.75, "examples": 16, "seconds": 0.1}

    _fake_module(monkeypatch, "onnx_model", evaluate=evaluate)
    assert main(["evaluate", "--backend", "onnx", "--weights", str(checkpoint), "--synthetic", "--test-subset",
                 "16", "--resize", "none"]) == 0
    assert capsys.readouterr().out == f"[onnx] {checkpoint}: test loss 0.5000, test acc 0.7500 on 16 images\n"
    assert calls == [dict(weights=str(checkpoint), arch=None, style=None, stem=None, resize=None, batch_size=256,
                          test_subset=16, data_dir=None, synthetic=True, tta="none", progress=False)]
    for flag, value in (("--precision", "bf16"), ("--device", "gpu")):
        assert main(["evaluate", "--backend", "onnx", "--weights", str(checkpoint), flag, value]) == 1
        err = capsys.readouterr().err
        assert err.startswith("resnet-fmnist evaluate: error: --backend onnx ") and f"{flag} {value}" in err
    assert len(calls) == 1


# --------------------------------------------------------------------------- a run directory (every backend)

TINY = dict(arch=SMALL_ARCH, epochs=2, batch_size=16, lr=0.05, resize=None, subset=64, test_subset=32, seed=0,
            momentum=0.9, nesterov=True, weight_decay=5e-4)
TINY_FLAGS = ["--arch", SMALL_ARCH, "--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--resize", "none",
              "--subset", "64", "--test-subset", "32", "--seed", "0", "--momentum", "0.9", "--nesterov",
              "--weight-decay", "5e-4", "--synthetic"]


@pytest.mark.graph_executor
def test_a_run_writes_both_files_and_resumes_an_older_runs_npz_bit_for_bit(backend, backend_name, tmp_path, capsys):
    """Two epochs; the directory as it was after epoch 1 (copied when epoch 2's line is printed),
    turned into an older run's (checkpoint.npz alone), resumed from the command line: the same bits."""
    whole, old = tmp_path / "whole", tmp_path / "old"

    def print_fn(line):
        if "epoch 2/" in line:
            old.mkdir()
            checkpoint = whole / CHECKPOINT_NAME
            spec = read_spec(checkpoint)
            save_weights(old / LEGACY_CHECKPOINT_NAME, load_weights(checkpoint, spec), spec,
                         metadata=read_metadata(checkpoint), optimizer_state=read_optimizer_state(checkpoint))
            shutil.copy(whole / METRICS_NAME, old / METRICS_NAME)

    backend.train(out_dir=str(whole), synthetic=True, print_fn=print_fn, **TINY)
    assert _listing(whole) == [".lock", CHECKPOINT_NAME, METRICS_NAME, MODEL_NAME]
    spec = read_spec(whole / CHECKPOINT_NAME)
    # The model is the checkpoint less the optimizer's tensors.
    model = safetensors.numpy.load_file(str(whole / MODEL_NAME))
    assert set(model) == set(parameter_shapes(spec))
    _assert_same_arrays(load_weights(whole / MODEL_NAME, spec), load_weights(whole / CHECKPOINT_NAME, spec))
    assert read_metadata(whole / MODEL_NAME) == read_metadata(whole / CHECKPOINT_NAME)
    assert read_optimizer_state(whole / MODEL_NAME) == {} and int(read_optimizer_state(whole / CHECKPOINT_NAME)
                                                                   [STEP_STATE]) == 8

    assert main(["train", "--backend", backend_name, "--out", str(old), "--resume", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"resuming after epoch 1 from {old / LEGACY_CHECKPOINT_NAME}" in out
    assert f"wrote {old / CHECKPOINT_NAME}, {old / MODEL_NAME} and {old / METRICS_NAME}" in out
    assert _listing(old) == sorted([".lock", CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, METRICS_NAME, MODEL_NAME])
    want, got = load_weights(whole / CHECKPOINT_NAME, spec), load_weights(old / CHECKPOINT_NAME, spec)
    assert all(np.array_equal(want[k], got[k]) for k in want), "resume from the .npz is not bit-identical"
    _assert_same_arrays(read_optimizer_state(old / CHECKPOINT_NAME), read_optimizer_state(whole / CHECKPOINT_NAME))
    assert read_metadata(old / LEGACY_CHECKPOINT_NAME)["train_state"]["epoch"] == 1  # left as it was
