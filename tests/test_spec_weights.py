"""common.spec and common.weights: the tables every backend builds from, and the file format."""
import json
import os
import re

import numpy as np
import pytest

from common import oracle
from common.fastpaths import tap_selection, tap_windows
from common.flops import training_flops_per_example
from common.naming import canonical_names, count_parameters, parameter_shapes, trainable_parameter_names
from common.spec import check_input_shape, get_spec, iter_blocks, stage_output_shapes
from common.weights import (
    FORMAT_TAG,
    WeightsError,
    check_weights,
    init_weights,
    load_weights,
    read_metadata,
    save_weights,
)


def test_parameter_counts_from_the_spec():
    assert count_parameters("resnet18", 1, 10) == 11_178_378
    # Keras and Gluon would also count the BatchNorm running statistics:
    assert count_parameters("resnet18", 1, 10, trainable_only=False) == 11_186_186


def test_canonical_names_are_torchvision_names():
    shapes = parameter_shapes("resnet18", 1, 10)
    assert list(shapes)[:6] == ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                "bn1.running_var"]
    assert shapes["conv1.weight"] == (64, 1, 7, 7)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer2.0.downsample.0.bias"] == (128,)
    assert "layer1.0.downsample.0.weight" not in shapes  # the first stage keeps its shape
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["fc.weight"] == (10, 512)
    assert len(trainable_parameter_names()) == 4 + 8 * 8 + 3 * 2 + 2  # stem, 8 blocks, 3 shortcuts, fc
    assert len(trainable_parameter_names()) == len([n for n in shapes if "running" not in n])


def _units_in_other_words(shapes, rename):
    """parameter_shapes as the units canonical_names takes, each array named by ``rename``."""
    prefixes = ["conv1", "bn1"] + [block.name for block in iter_blocks()] + ["fc"]
    return [{rename(name)[len(prefix) + 1:]: np.zeros(shape) for name, shape in reversed(shapes.items())
             if name.startswith(prefix + ".")} for prefix in prefixes]


def _as_keras_and_the_book(name):
    # The book's shortcut is conv3; Keras says kernel, gamma, beta, moving_mean, moving_variance.
    head, _, last = name.replace("downsample.0", "conv3").rpartition(".")
    words = {"weight": "gamma", "bias": "beta"} if ".bn" in f".{head}" else {"weight": "kernel"}
    words.update(running_mean="moving_mean", running_var="moving_variance")
    return f"{head}.{words.get(last, last)}"


def test_canonical_names_map_units_in_any_frameworks_words():
    shapes = parameter_shapes("resnet18", 1, 10)
    for rename in (lambda name: name, _as_keras_and_the_book):
        units = _units_in_other_words(shapes, rename)
        named = canonical_names(units)
        assert list(named) == list(shapes)  # spec order, whatever order a unit lists its arrays in
        assert {name: value.shape for name, value in named.items()} == shapes
    keras_bn = _units_in_other_words(shapes, _as_keras_and_the_book)[1]
    assert sorted(keras_bn) == ["beta", "gamma", "moving_mean", "moving_variance"]
    assert "conv3.kernel" in _units_in_other_words(shapes, _as_keras_and_the_book)[4]
    # Unknown dimensions (0, -1, None: not yet inferred, as Gluon's deferred init) pass.
    units = _units_in_other_words(shapes, lambda name: name)
    units[0]["weight"] = np.zeros((64, 0, 7, 7))
    assert canonical_names(units)["conv1.weight"].shape == (64, 0, 7, 7)


@pytest.mark.parametrize("change, words", [
    (lambda units: units.pop(5), "has 10 layers with weights and residual blocks, resnet18 has 11"),
    (lambda units: units[2].update({"conv4.weight": units[2].pop("conv2.weight")}),
     "unexpected ['layer1.0.conv4.weight'], missing ['layer1.0.conv2.weight']"),
    (lambda units: units[-1].update(weight=np.zeros((10, 256))),
     "'fc.weight' has shape (10, 256), resnet18's is (10, 512)"),
    (lambda units: units.insert(3, units.pop(2)), None),  # two blocks of one stage: same shapes, either order
    (lambda units: units.__setitem__(slice(7, 10, 2), units[9:6:-2]),
     "'layer3.1.conv1.weight' has shape (512, 512, 3, 3), resnet18's is (256, 256, 3, 3)"),
])
def test_canonical_names_say_what_does_not_map(change, words):
    units = _units_in_other_words(parameter_shapes("resnet18", 1, 10), lambda name: name)
    change(units)
    if words is None:
        canonical_names(units)  # position is all there is to tell layer1.0 from layer1.1
        return
    with pytest.raises(ValueError) as error:
        canonical_names(units)
    assert words in str(error.value) and "build it with resnet()" in str(error.value)


def test_blocks_follow_the_chapter():
    blocks = list(iter_blocks("resnet18"))
    assert [b.name for b in blocks] == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert [(b.stride, b.use_1x1conv) for b in blocks] == [(1, False), (1, False)] + [(2, True), (1, False)] * 3


def test_stage_shapes_of_the_chapter():
    assert stage_output_shapes("resnet18", 1, 224, 224) == [
        ("stem", (64, 56, 56)), ("layer1", (64, 56, 56)), ("layer2", (128, 28, 28)), ("layer3", (256, 14, 14)),
        ("layer4", (512, 7, 7)), ("pool", (512,)), ("fc", (10,))]


def test_flops_match_the_issue_figures():
    assert training_flops_per_example(height=96, width=96) / 1e9 == pytest.approx(1.90, abs=0.02)
    assert training_flops_per_example(height=28, width=28) / 1e9 == pytest.approx(0.197, abs=0.002)


@pytest.mark.parametrize("size, stride", [(1, 1), (2, 1), (2, 2), (3, 1), (4, 2)])
def test_tap_selection_turns_a_convolution_into_a_dense_layer(size, stride):
    # The backends' tiny-map fast path: kernel x tap_selection, rearranged, is a dense weight.
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.normal(size=(3, 4, size, size))
    weight = rng.normal(size=(5, 4, 3, 3))
    expected, _ = oracle.conv2d(x, weight, None, stride, 1)
    out = expected.shape[2]
    selection = tap_selection((size, size), (3, 3), (stride, stride), (1, 1))
    assert selection.shape == (9, out * out * size * size) and selection.sum(axis=0).max() == 1
    dense = (weight.reshape(5 * 4, 9) @ selection).reshape(5, 4, out * out, size * size)
    dense = dense.transpose(0, 2, 1, 3).reshape(5 * out * out, 4 * size * size)
    got = (x.reshape(3, -1) @ dense.T).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, kernel, stride, padding", [(3, 3, 1, 1), (2, 3, 1, 1), (6, 3, 2, 1), (1, 3, 1, 1),
                                                         (4, 3, 2, 1), (9, 7, 2, 3), (5, 1, 2, 0)])
def test_tap_windows_sum_the_nonzero_terms_of_a_convolution(size, kernel, stride, padding):
    # The taps path: per tap, one product over the output pixels whose window meets the input
    # there, is the convolution; every pixel-tap pair it leaves out meets padding only.
    rng = np.random.default_rng(size * 100 + kernel * 10 + stride)
    x = rng.normal(size=(2, 3, size, size))
    weight = rng.normal(size=(4, 3, kernel, kernel))
    expected, _ = oracle.conv2d(x, weight, None, stride, padding)
    out = expected.shape[2]
    windows = tap_windows(kernel, size, stride, padding)
    got, pairs = np.zeros_like(expected), 0
    for i, top, bottom, row in windows:
        for j, left, right, col in windows:
            rows = slice(row, row + stride * (bottom - top - 1) + 1, stride)
            cols = slice(col, col + stride * (right - left - 1) + 1, stride)
            pixels = x[:, :, rows, cols]
            got[:, :, top:bottom, left:right] += np.einsum("nchw,oc->nohw", pixels, weight[:, :, i, j])
            pairs += (bottom - top) * (right - left)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    meets = sum(0 <= stride * o + t - padding < size for o in range(out) for t in range(kernel)) ** 2
    assert pairs == meets  # each pair of an output pixel and a tap that meets the input, once


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="resnet18"):
        get_spec("resnet19")


@pytest.mark.parametrize("shape, fmt, words", [
    ((28, 28), "NCHW", "rank-4"),
    ((2, 28, 28, 1), "NCHW", "NHWC"),
    ((2, 1, 28, 28), "NHWC", "NCHW"),
])
def test_check_input_shape_says_what_is_expected(shape, fmt, words):
    with pytest.raises(ValueError, match=words) as info:
        check_input_shape(shape, 1, fmt)
    assert "expected" in str(info.value)


def test_check_input_shape_accepts_good_batches():
    check_input_shape((2, 1, 28, 28), 1, "NCHW")
    check_input_shape((None, 96, 96, 1), 1, "NHWC")


# --- initial weights ------------------------------------------------------------------

def test_init_weights_are_reproducible_and_seed_dependent():
    a, b, c = init_weights(seed=0), init_weights(seed=0), init_weights(seed=1)
    assert list(a) == list(parameter_shapes())
    for name in a:
        assert a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_init_weights_follow_the_chapter():
    w = init_weights(seed=3)
    bound = np.sqrt(6.0 / (64 * 9 + 64 * 9))
    assert np.abs(w["layer1.0.conv1.weight"]).max() <= bound
    assert np.abs(w["layer1.0.conv1.weight"]).max() > 0.95 * bound
    assert abs(float(w["layer1.0.conv1.weight"].std()) - bound / np.sqrt(3)) < 0.01 * bound
    np.testing.assert_array_equal(w["bn1.weight"], 1)
    np.testing.assert_array_equal(w["bn1.running_var"], 1)
    for name in ("conv1.bias", "bn1.bias", "bn1.running_mean", "fc.bias"):
        np.testing.assert_array_equal(w[name], 0)


def test_init_weights_are_pinned():
    # The same numbers on every NumPy (1.23 for MXNet, 2.x for TensorFlow): a checksum of
    # the seed-0 weights, so a change of random stream cannot slip in unnoticed.
    w = init_weights(seed=0)
    digest = float(sum(float(np.abs(v.astype(np.float64)).sum()) for v in w.values()))
    first = w["conv1.weight"].ravel()[:3].tolist()
    expected = json.load(open(os.path.join(os.path.dirname(__file__), "expected", "init_weights.json")))
    assert digest == pytest.approx(expected["abs_sum"], rel=1e-12)
    assert first == expected["conv1_first3"]


# --- the weights file -----------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    w = init_weights(seed=5)
    path = tmp_path / "w.npz"
    save_weights(path, w, metadata={"epoch": 3})
    loaded = load_weights(path)
    assert list(loaded) == list(w)
    for name in w:
        np.testing.assert_array_equal(loaded[name], w[name])
    assert read_metadata(path) == {"epoch": 3}
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["__format__"]) == FORMAT_TAG and str(npz["__arch__"]) == "resnet18"
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary left behind


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change, words", [
    (lambda a: a.pop("layer3.1.bn2.running_var"), "missing array 'layer3.1.bn2.running_var'"),
    (lambda a: a.update(extra=np.zeros(3, np.float32)), "unexpected array 'extra'"),
    (lambda a: a.update({"fc.weight": np.zeros((10, 256), np.float32)}), "'fc.weight' has shape"),
    (lambda a: a["layer1.0.conv1.bias"].__setitem__(0, np.nan), "'layer1.0.conv1.bias' contains NaN"),
    (lambda a: a.update(__arch__=np.array("resnet34")), "holds weights for resnet34 (style d2l), not resnet18"),
    (lambda a: a.update(__style__=np.array("preact")),
     "holds weights for resnet18 (style preact), not resnet18 (style d2l)"),
    (lambda a: a.pop("__format__"), "not a resnet-fmnist weights file"),
])
def test_load_refuses_bad_files_naming_file_and_key(tmp_path, change, words):
    path = tmp_path / "w.npz"
    save_weights(path, init_weights(seed=0))
    _rewrite(path, change)
    with pytest.raises(WeightsError, match=re.escape(words)) as info:
        load_weights(path)
    assert str(path) in str(info.value)


def test_load_refuses_non_npz_and_pickles(tmp_path):
    text = tmp_path / "w.npz"
    text.write_text("not a zip")
    with pytest.raises(WeightsError, match="not a safetensors or .npz weights file"):
        load_weights(text)
    with pytest.raises(WeightsError, match="no such file"):
        load_weights(tmp_path / "absent.npz")
    pickled = tmp_path / "p.npz"
    np.savez(pickled, __format__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match=str(pickled)):
        load_weights(pickled)
    truncated = tmp_path / "t.npz"
    save_weights(truncated, init_weights(seed=0))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=str(truncated)):
        load_weights(truncated)


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "w.npz"
    good = init_weights(seed=0)
    save_weights(path, good)
    before = path.read_bytes()
    bad = dict(good)
    bad["fc.bias"] = np.full(10, np.inf, np.float32)
    with pytest.raises(WeightsError, match="fc.bias"):
        save_weights(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


def test_check_weights_infers_channels_and_classes():
    check_weights(init_weights(seed=0, in_channels=3, num_classes=7))
    with pytest.raises(WeightsError, match="num_classes|fc"):
        check_weights(init_weights(seed=0, in_channels=3, num_classes=7), num_classes=10)


# --- the machine's peak (common.machine) ------------------------------------------------------

def _cpuinfo(tmp_path, flags, mhz="2100.000", model="Some CPU"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nmodel name\t: other\n")
    return str(path)


@pytest.mark.parametrize("flags, lanes, per_core_cycle", [
    ("sse2 avx avx2 fma", 8, 32),  # AVX2: 8 lanes x 2 (multiply-add) x 2 FMA units
    ("sse2 avx avx2 fma avx512f avx512bw", 16, 64),
    ("sse2", 4, 8),  # no FMA: one multiply and one add unit counted as one
])
def test_theoretical_peak_from_lanes_fma_and_clock(tmp_path, monkeypatch, flags, lanes, per_core_cycle):
    from common import machine

    monkeypatch.setattr(machine, "_max_clock_ghz", lambda fields: float(fields["cpu MHz"]) / 1e3)
    info = machine.cpu_info(_cpuinfo(tmp_path, flags))
    assert info["model"] == "Some CPU" and info["fp32_lanes"] == lanes
    assert machine.theoretical_peak_gflops(info) == pytest.approx(info["cores"] * per_core_cycle * 2.1, abs=0.05)
    assert machine.describe(info).startswith(f"Some CPU, {info['cores']} cores, ")


def test_theoretical_peak_is_unknown_without_a_clock(tmp_path, monkeypatch):
    from common import machine

    monkeypatch.setattr(machine, "_max_clock_ghz", lambda fields: None)
    assert machine.theoretical_peak_gflops(machine.cpu_info(_cpuinfo(tmp_path, "avx2 fma"))) is None


def test_best_matmul_is_the_best_of_every_size_and_implementation():
    from common.machine import best_matmul_gflops

    peak = best_matmul_gflops({"a": lambda n: n / 10, "b": lambda n: 150.0 if n == 1024 else 1.0}, sizes=(512, 1024))
    assert (peak["gflops"], peak["by"], peak["size"]) == (150.0, "b", 1024)
    assert peak["table"] == {"a": {"512": 51.2, "1024": 102.4}, "b": {"512": 1.0, "1024": 150.0}}
