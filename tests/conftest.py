"""One test suite for every backend: RESNET_BACKEND (set by tox) picks the package.

Tests of ``common`` run everywhere; tests that take the ``backend`` fixture are skipped when
no backend is chosen. The few places where the chapter's code differs per framework sit in
``tests/chapter_<backend>.py`` (same functions in each), reached through ``chapter``.
"""
import importlib
import os

import numpy as np
import pytest

from helpers import real_data_dir

BACKEND = os.environ.get("RESNET_BACKEND", "")
# Every fast path, always, unless the environment says otherwise: a test must not depend on what
# a measurement picked on this machine (tests/test_autotune.py measures in a cache of its own).
os.environ.setdefault("RESNET_FAST_PATHS", "fast")

#: Where the framework-free tests (those that take no backend) run: once on numpy 2.x (torch's
#: environment) and once on numpy 1.23 (mx's), and wherever no backend is chosen. tf's and jax's
#: environments (numpy 2.x again) skip them to keep CI short.
FRAMEWORK_FREE_IN = ("", "torch", "mx")


def pytest_report_header(config):
    return f"RESNET_BACKEND={BACKEND or '(none: backend tests skipped)'}"


def pytest_collection_modifyitems(config, items):
    if BACKEND in FRAMEWORK_FREE_IN:
        return
    skip = pytest.mark.skip(reason=f"framework-free: run in the {' and '.join(FRAMEWORK_FREE_IN[1:])} environments")
    for item in items:
        if "backend_name" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


#: TensorFlow only: tests of the training loop and the command line (not of what a network or a
#: step computes) run TensorFlow's graph executor, RESNET_FAST_PATHS=native, which builds a Trainer
#: several times faster than XLA. Both paths are held to the oracle elsewhere (test_model,
#: test_families, test_training's step tests), and the fast one by every test not named here.
LOOP_TESTS_IN_TF = {
    "test_cli.py": None,  # every test
    "test_distributed.py": None,
    # (not the NaN tests: the graph executor's fused kernels do not carry a NaN image into the loss)
    "test_training.py": {"test_resume_ends_with_the_same_weights", "test_chapter_train_ch6_prints_the_chapter_lines",
                         "test_the_chapters_training_cell_runs"},
}


@pytest.fixture(autouse=True)
def _loop_tests_on_the_graph_executor_in_tf(request, monkeypatch):
    if BACKEND != "tf":
        return
    names = LOOP_TESTS_IN_TF.get(os.path.basename(str(request.node.fspath)), set())
    if names is None or request.node.originalname in names:
        monkeypatch.setenv("RESNET_FAST_PATHS", "native")


@pytest.fixture(scope="session")
def backend_name():
    if not BACKEND:
        pytest.skip("no backend chosen: set RESNET_BACKEND=torch|tf|mx|jax (tox -e torch|tf|mx|jax does)")
    return BACKEND


@pytest.fixture(scope="session")
def backend(backend_name):
    from common.backend import load_backend

    return load_backend(backend_name)


@pytest.fixture(scope="session")
def chapter(backend_name, backend):
    """The chapter's own code for this framework (tests/chapter_<backend>.py).

    The backend package is imported first, as it may set up its framework before the
    framework's first import (resnet_mx sets MXNet's thread count).
    """
    return importlib.import_module(f"chapter_{backend_name}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def real_data():
    return real_data_dir()
