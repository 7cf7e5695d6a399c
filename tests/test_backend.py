"""Choosing a backend and setting up its framework."""
import os

import numpy as np
import pytest

from common.backend import load_backend, physical_cpu_cores
from common.fastpaths import PLAIN_LAYERS_ENV, plain_layers, tap_selection


def _topology(root, cpu, package, core):
    folder = root / f"cpu{cpu}" / "topology"
    folder.mkdir(parents=True)
    (folder / "physical_package_id").write_text(f"{package}\n")
    (folder / "core_id").write_text(f"{core}\n")


def test_physical_cores_count_hyperthreads_once(tmp_path):
    # Two packages of two cores with two threads each: 8 CPUs, 4 cores.
    for cpu in range(8):
        _topology(tmp_path, cpu, package=cpu // 4, core=cpu % 2)
    assert physical_cpu_cores(range(8), sysfs=str(tmp_path)) == 4
    assert physical_cpu_cores([0, 2], sysfs=str(tmp_path)) == 1  # siblings of one core
    assert physical_cpu_cores([0, 1, 4], sysfs=str(tmp_path)) == 3


def test_physical_cores_without_topology_count_every_cpu(tmp_path):
    assert physical_cpu_cores([0, 1, 2], sysfs=str(tmp_path)) == 3


def test_physical_cores_here_is_within_the_cpus_this_process_has():
    assert 1 <= physical_cpu_cores() <= len(os.sched_getaffinity(0))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'paddle'.*torch, tf, mx, jax"):
        load_backend("paddle")


@pytest.mark.backend("mx")
@pytest.mark.skipif("OMP_NUM_THREADS" in os.environ, reason="the user chose OMP_NUM_THREADS")
def test_mxnet_gets_every_physical_core(backend_name):
    # MXNet 1.x alone would give each operator half the CPUs (it assumes hyper-threading).
    load_backend(backend_name)
    assert os.environ["MXNET_OMP_MAX_THREADS"] == str(physical_cpu_cores())


@pytest.mark.backend("mx")
@pytest.mark.parametrize("size, stride", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 2), (2, 2)), ((1, 2), (1, 1))])
def test_mxnet_graph_builds_the_spec_tap_selection(backend_name, size, stride):
    # resnet_mx builds the tiny-map convolutions' selection matrix from arange inside its graph.
    load_backend(backend_name)
    import mxnet as mx

    from resnet_mx import kernels

    expected = tap_selection(size, (3, 3), stride, (1, 1))
    np.testing.assert_array_equal(kernels.tap_selection(mx.nd, size, (3, 3), stride, (1, 1)).asnumpy(), expected)
    np.testing.assert_array_equal(kernels.tap_selection(mx.sym, size, (3, 3), stride, (1, 1)).eval()[0].asnumpy(),
                                  expected)


@pytest.mark.parametrize("value, plain", [(None, False), ("0", False), ("1", True), ("", False)])
def test_plain_layers_reads_the_environment(monkeypatch, value, plain):
    if value is None:
        monkeypatch.delenv(PLAIN_LAYERS_ENV, raising=False)
    else:
        monkeypatch.setenv(PLAIN_LAYERS_ENV, value)
    assert plain_layers() is plain
    assert plain_layers(True) is True and plain_layers(False) is False  # an argument wins


def test_plain_layers_refuses_other_values(monkeypatch):
    monkeypatch.setenv(PLAIN_LAYERS_ENV, "yes")
    with pytest.raises(ValueError, match="RESNET_PLAIN_LAYERS must be 0 or 1"):
        plain_layers()
