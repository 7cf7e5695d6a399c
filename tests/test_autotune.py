"""common.autotune: fast paths chosen by measurement once per machine, and forced by the environment."""
import json

import numpy as np
import pytest

from common import autotune, oracle
from common.autotune import CACHE_ENV, FAST_PATHS_ENV, NATIVE, choose

from helpers import disturbed_weights, scaled_for_unit_logits


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """Auto mode with an empty cache file of its own; returns the file's path."""
    path = tmp_path / "cache" / "autotune.json"
    monkeypatch.setenv(FAST_PATHS_ENV, "auto")
    monkeypatch.setenv(CACHE_ENV, str(path))
    autotune.clear_memory()
    yield path
    autotune.clear_memory()


def _timer(seconds, calls):
    def timer(run):
        name = run()
        calls.append(name)
        return seconds[name]
    return timer


def _make_run(path):
    return lambda: path


def test_auto_times_each_path_once_and_keeps_the_fastest(auto):
    calls = []
    timer = _timer({"dense": 2.0, "unfold": 0.5, NATIVE: 1.0}, calls)
    assert choose("fw 1", "site a", ["dense", "unfold", NATIVE], _make_run, timer=timer) == "unfold"
    assert calls == ["dense", "unfold", NATIVE] * 3  # the paths take turns (after one untimed warm-up each)
    assert choose("fw 1", "site a", ["dense", "unfold", NATIVE], _make_run, timer=timer) == "unfold"
    assert len(calls) == 9  # remembered in this process
    autotune.clear_memory()
    assert choose("fw 1", "site a", ["dense", "unfold", NATIVE], _make_run, timer=timer) == "unfold"
    assert len(calls) == 9  # read back from the file
    stored = json.loads(auto.read_text())
    (machine,) = stored
    assert machine.endswith("| fw 1") and stored[machine]["site a"] == {
        "choice": "unfold", "ms": {"dense": 2000.0, "unfold": 500.0, NATIVE: 1000.0}}
    # Another framework version, or another site, is measured anew.
    choose("fw 2", "site a", ["dense", NATIVE], _make_run, timer=timer)
    choose("fw 1", "site b", ["dense", NATIVE], _make_run, timer=timer)
    assert len(calls) == 9 + 6 + 6 and len(json.loads(auto.read_text())) == 2


def test_native_can_win(auto):
    timer = _timer({"dense": 2.0, NATIVE: 1.0}, [])
    assert choose("fw", "site", ["dense", NATIVE], _make_run, timer=timer) == NATIVE


@pytest.mark.parametrize("mode, expected", [("fast", "dense"), ("native", NATIVE), ("FAST", "dense")])
def test_the_environment_forces_either_path_without_measuring(auto, monkeypatch, mode, expected):
    monkeypatch.setenv(FAST_PATHS_ENV, mode)
    timer = _timer({}, [])  # any measurement would fail: no times
    assert choose("fw", "site", ["dense", "unfold", NATIVE], _make_run, timer=timer) == expected
    assert not auto.exists()


def test_a_site_without_a_fast_path_is_not_measured(auto):
    assert choose("fw", "site", [NATIVE], _make_run, timer=_timer({}, [])) == NATIVE


def test_a_bad_mode_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(FAST_PATHS_ENV, "fastest")
    with pytest.raises(ValueError, match=r"RESNET_FAST_PATHS='fastest': use auto .*, fast .* or native"):
        autotune.fast_paths_mode()


def test_a_broken_cache_is_measured_again_and_rewritten(auto):
    auto.parent.mkdir(parents=True)
    auto.write_text("{not json")
    calls = []
    with pytest.warns(UserWarning, match="ignoring the autotuning cache"):
        assert choose("fw", "site", ["dense", NATIVE], _make_run, timer=_timer({"dense": 1.0, NATIVE: 2.0}, calls)) \
            == "dense"
    assert calls and json.loads(auto.read_text())  # valid JSON again


def test_an_unwritable_cache_still_chooses(auto, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "autotune.json"))  # its folder is a file
    with pytest.warns(UserWarning, match="could not write the autotuning cache"):
        assert choose("fw", "site", ["dense", NATIVE], _make_run, timer=_timer({"dense": 1.0, NATIVE: 2.0}, [])) \
            == "dense"


def test_a_slow_spell_during_one_path_does_not_decide(auto):
    # Path a is faster; the machine is slow during a's first timed call only.
    times = iter([9.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    assert choose("fw", "site", ["a", NATIVE], _make_run, timer=lambda run: next(times)) == "a"


def test_time_call_times_one_call():
    calls = []
    assert 0 <= autotune.time_call(lambda: calls.append(1)) < 0.1 and calls == [1]


# --- a backend's network, measured for real --------------------------------------------------

@pytest.mark.filterwarnings("ignore:All children of this Sequential")
def test_autotuned_network_computes_the_oracles_function_and_records_its_choices(backend, auto):
    images = np.random.default_rng(11).uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    weights = scaled_for_unit_logits(disturbed_weights(), images, training=True)
    net = backend.resnet18()
    backend.import_weights(net, weights)
    loss, _ = backend.loss_and_gradients(net, images, np.arange(4) % 10)
    expected_loss, _ = oracle.loss_and_gradients(weights, images, np.arange(4) % 10)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    backend.import_weights(net, weights)
    np.testing.assert_allclose(backend.forward(net, images), oracle.forward(weights, images), rtol=0, atol=1e-4)
    (choices,) = json.loads(auto.read_text()).values()
    assert choices and all(entry["choice"] in entry["ms"] for entry in choices.values())
